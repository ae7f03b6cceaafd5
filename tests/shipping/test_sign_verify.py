"""`edgepack sign` and `edgepack verify` (OpenSSF model-signing, local EC keys, no network) on
the session's real bundle, which the build signed (--sign-key): every tampering names the
file, a foreign signature names the key, and signing changes no hash in manifest.json."""
from __future__ import annotations

import json
import zipfile

import pytest
from shipping_cli import edgepack, snapshot

from edgepack.shipping.integrity import check_bundle
from edgepack.shipping.signing import fingerprint, load_public_key


def test_the_build_signed_the_bundle_and_verify_accepts_tree_and_zip(tiny_bundle, signing_keys):
    tree, zip_path = tiny_bundle["tree"], tiny_bundle["zip"]
    manifest = json.loads((tree / "manifest.json").read_text())
    assert "model.sig" not in manifest["files"]                      # signed after the manifest
    with zipfile.ZipFile(zip_path) as z:                             # the zip carries the same signature
        assert z.read(f"{tree.name}/model.sig") == (tree / "model.sig").read_bytes()
    for bundle in (tree, zip_path):
        res = edgepack("verify", bundle, "--key", signing_keys["public"])
        assert res.exit_code == 0, res.output
        key = fingerprint(load_public_key(signing_keys["public"]))
        assert f"signature: valid, key {key}" in res.output
        assert f"{len(manifest['files'])} files match their sha256 and the signature" in res.output
    res = edgepack("inspect", zip_path)                              # inspect still passes on a signed bundle
    assert res.exit_code == 0 and "CHANGED" not in res.output and "signed: model.sig" in res.output
    result = check_bundle(zip_path, signing_keys["public"])          # the library call behind the command
    assert result.ok and result.signature == "valid" and all(ok for _, ok in result.files)


def test_sign_again_with_another_key_keeps_every_hash_and_the_pair_consistent(bundle_copy, signing_keys):
    tree, zip_path = bundle_copy["tree"], bundle_copy["zip"]
    before = snapshot(tree)
    res = edgepack("sign", zip_path, "--key", signing_keys["other_private"])
    assert res.exit_code == 0, res.output
    after = snapshot(tree)
    assert {k: v for k, v in after.items() if k != "model.sig"} == {k: v for k, v in before.items() if k != "model.sig"}
    assert after["model.sig"] != before["model.sig"]
    with zipfile.ZipFile(zip_path) as z:
        assert z.read(f"{tree.name}/model.sig") == after["model.sig"]
    assert edgepack("verify", zip_path, "--key", signing_keys["other_public"]).exit_code == 0
    res = edgepack("verify", zip_path, "--key", signing_keys["public"])
    assert res.exit_code == 2
    other = fingerprint(load_public_key(signing_keys["other_public"]))
    assert f"model.sig: signed by key {other}, not by public.pem" in res.output


def _tamper(tree, case):
    """Change the bundle one way; return the text the refusal must contain."""
    if case == "model file changed":
        data = bytearray((tree / "model.tflite").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tree / "model.tflite").write_bytes(bytes(data))
        return "model.tflite: sha256 does not match manifest.json"
    if case == "a file and manifest.json changed together":
        import hashlib

        (tree / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
        manifest = json.loads((tree / "manifest.json").read_text())
        manifest["files"]["labels.txt"] = hashlib.sha256((tree / "labels.txt").read_bytes()).hexdigest()
        (tree / "manifest.json").write_text(json.dumps(manifest))
        return "labels.txt, manifest.json: changed since the bundle was signed"
    if case == "file added":
        (tree / "extra.bin").write_bytes(b"payload")
        return "extra.bin: not listed in manifest.json"
    if case == "file removed":
        (tree / "reference.npz").unlink()
        return "reference.npz: missing"
    if case == "signature removed":
        (tree / "model.sig").unlink()
        return "not signed (no model.sig)"
    if case == "signature garbled":
        (tree / "model.sig").write_text("{}")
        return "model.sig: unreadable signature"
    raise AssertionError(case)


CASES = ["model file changed", "a file and manifest.json changed together", "file added", "file removed",
         "signature removed", "signature garbled"]


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_bundle_fails_verify_naming_the_file(case, bundle_copy, signing_keys):
    expected = _tamper(bundle_copy["tree"], case)
    res = edgepack("verify", bundle_copy["tree"], "--key", signing_keys["public"])
    assert res.exit_code == 2, res.output
    error = [line for line in res.output.splitlines() if line.startswith("edgepack: error: ")]
    assert len(error) == 1 and expected in error[0], res.output


def test_sign_refuses_a_changed_bundle_and_leaves_it_as_it_was(bundle_copy, signing_keys):
    _tamper(bundle_copy["tree"], "model file changed")
    before = snapshot(bundle_copy["out"])
    res = edgepack("sign", bundle_copy["tree"], "--key", signing_keys["private"])
    assert res.exit_code == 2 and "model.tflite changed since the bundle was made" in res.output
    assert snapshot(bundle_copy["out"]) == before


@pytest.mark.parametrize("command,key,expected", [
    ("sign", "missing.pem", "missing.pem: key file not found"),
    ("sign", "public", "public.pem: not a PEM private key"),
    ("verify", "private", "private.pem: not a PEM public key (that is a private key"),
    ("verify", "rsa", "rsa.pem: a RSAPublicKey; model-signing takes elliptic-curve keys"),
])
def test_a_wrong_kind_of_key_is_named(command, key, expected, bundle_copy, signing_keys, tmp_path):
    if key == "rsa":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        path = tmp_path / "rsa.pem"
        path.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        path = signing_keys.get(key, tmp_path / key)
    before = snapshot(bundle_copy["out"])
    res = edgepack(command, bundle_copy["zip"], "--key", path)
    assert res.exit_code == 2 and expected in res.output, res.output
    assert snapshot(bundle_copy["out"]) == before


def test_verify_without_a_key_checks_the_hashes_only(bundle_copy):
    res = edgepack("verify", bundle_copy["zip"])
    assert res.exit_code == 0 and "signature: model.sig present, not checked (no --key)" in res.output
    _tamper(bundle_copy["tree"], "model file changed")
    res = edgepack("verify", bundle_copy["tree"])
    assert res.exit_code == 2 and "model.tflite: sha256 does not match manifest.json" in res.output


def test_a_tampered_zip_fails_verify_naming_the_file(bundle_copy, signing_keys):
    zip_path = bundle_copy["zip"]
    with zipfile.ZipFile(zip_path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in entries if n.endswith("/report.json"))
    entries[name] = entries[name].rstrip() + b"\n\n"            # one byte more than was signed
    with zipfile.ZipFile(zip_path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    res = edgepack("verify", zip_path, "--key", signing_keys["public"])
    assert res.exit_code == 2 and "report.json: sha256 does not match manifest.json" in res.output, res.output
