"""push, ls and pull against a real OCI registry: Debian's docker-registry (CNCF distribution
2.8) on loopback with htpasswd authentication (tests/shipping/registry_server.py), and one
case with a self-signed TLS certificate. Without docker-registry these tests fail, not
skip: CI installs it (scripts/install-system-deps.sh)."""
from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from registry_server import PASSWORD, USER, free_port
from shipping_cli import edgepack, snapshot

from edgepack.bundle import bundle_tree, inspect_bundle
from edgepack.shipping.artifact import TITLE, build_artifact
from edgepack.shipping.refs import parse_ref
from edgepack.shipping.stores import open_store

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pushed(registry, tiny_bundle):
    """The session's signed bundle pushed as digits:1.0; (cli result, digest)."""
    res = edgepack("push", tiny_bundle["zip"], f"{registry.host}/digits:1.0", "--insecure", env=registry.env)
    assert res.exit_code == 0, res.output
    digest = next(line.split()[1] for line in res.output.splitlines() if line.startswith("digest: "))
    return res, digest


def test_push_prints_the_digest_and_the_tags_app_teams_follow(pushed, registry, tiny_bundle):
    res, digest = pushed
    assert digest.startswith("sha256:") and len(digest) == 71
    assert "tags: 1.0, tflite-int8, tflite-int8-1.0" in res.output
    files = sum(1 for p in tiny_bundle["tree"].rglob("*") if p.is_file())      # model.sig included
    assert f"({files} files, signed)" in res.output
    assert PASSWORD not in res.output


def test_ls_lists_tags_with_target_metric_size_and_p50(pushed, registry, tiny_bundle, tmp_path):
    _, digest = pushed
    docker = tmp_path / "docker"                 # credentials from the docker config file this time
    docker.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    env = {"DOCKER_CONFIG": str(docker), "EDGEPACK_REGISTRY_USERNAME": None, "EDGEPACK_REGISTRY_PASSWORD": None}
    res = edgepack("ls", f"{registry.host}/digits", "--insecure", "--json", env=env)
    assert res.exit_code == 0, res.output
    rows = {r["tag"]: r for r in json.loads(res.output)}
    assert {"1.0", "tflite-int8", "tflite-int8-1.0"} <= set(rows)
    report = json.loads((tiny_bundle["tree"] / "report.json").read_text())
    row = rows["tflite-int8"]
    assert row["digest"] == digest and row["target"] == "tflite-int8" and row["signed"] is True
    assert row["metric"] == report["accuracy"]["metric"] and row["value"] == pytest.approx(report["accuracy"]["value"])
    assert row["size_bytes"] == report["artifact"]["size_bytes"]
    assert row["p50_ms"]["host"] == pytest.approx(report["devices"][0]["latency_ms"]["p50"], rel=1e-5)
    table = edgepack("ls", f"{registry.host}/digits", "--insecure", env=env)
    line = next(line for line in table.output.splitlines() if line.startswith("tflite-int8 "))
    assert "tflite-int8" in line and "host" in line and digest[:19] in line


def test_pull_by_tag_round_trips_byte_identical(pushed, registry, tiny_bundle, signing_keys, tmp_path):
    out = tmp_path / "pulled"
    res = edgepack("pull", f"{registry.host}/digits:tflite-int8", "--out", out, "--key", signing_keys["public"],
                   "--insecure", env=registry.env)
    assert res.exit_code == 0, res.output
    assert "signature: valid" in res.output
    assert (out / tiny_bundle["zip"].name).read_bytes() == tiny_bundle["zip"].read_bytes()
    assert snapshot(out / tiny_bundle["tree"].name) == snapshot(tiny_bundle["tree"])
    assert sorted(p.name for p in out.iterdir()) == sorted([tiny_bundle["zip"].name, tiny_bundle["tree"].name])


def test_pull_by_digest(pushed, registry, tiny_bundle, signing_keys, tmp_path):
    _, digest = pushed
    out = tmp_path / "by-digest"
    res = edgepack("pull", f"{registry.host}/digits@{digest}", "--out", out, "--key", signing_keys["public"],
                   "--insecure", env=registry.env)
    assert res.exit_code == 0, res.output
    assert (out / tiny_bundle["zip"].name).read_bytes() == tiny_bundle["zip"].read_bytes()
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    res = edgepack("pull", f"{registry.host}/digits@{wrong}", "--out", tmp_path / "none", "--insecure",
                   env=registry.env)
    assert res.exit_code == 2 and f"no artifact {wrong}" in res.output
    assert not (tmp_path / "none").exists()


def test_wrong_password_exits_2_without_printing_it(pushed, registry, tmp_path):
    env = dict(registry.env, EDGEPACK_REGISTRY_PASSWORD="not-the-password")
    for args in (["pull", f"{registry.host}/digits:1.0", "--out", tmp_path / "out"], ["ls", f"{registry.host}/digits"]):
        res = edgepack(*args, "--insecure", env=env)
        assert res.exit_code == 2, res.output
        assert "credentials refused (401 Unauthorized" in res.output
        assert "not-the-password" not in res.output and PASSWORD not in res.output
    res = edgepack("ls", f"{registry.host}/digits", "--insecure",
                   env={"EDGEPACK_REGISTRY_USERNAME": None, "EDGEPACK_REGISTRY_PASSWORD": None,
                        "DOCKER_CONFIG": str(tmp_path)})
    assert res.exit_code == 2 and "asks for credentials and none are set" in res.output
    assert not (tmp_path / "out").exists()


def test_registry_down_exits_1_with_a_clear_error_and_no_output(tiny_bundle, signing_keys, tmp_path):
    host = f"127.0.0.1:{free_port()}"               # nothing listens there
    out = tmp_path / "out"
    for args in (["pull", f"{host}/digits:1.0", "--out", out, "--key", signing_keys["public"]],
                 ["push", tiny_bundle["zip"], f"{host}/digits:1.0"], ["ls", f"{host}/digits"]):
        res = edgepack(*args, "--insecure")
        assert res.exit_code == 1, res.output
        assert f"{host}: registry unreachable while connecting" in res.output and "Connection refused" in res.output
    assert not out.exists()


def test_unsigned_bundle_is_refused_unless_allowed(registry, bundle_copy, signing_keys, tmp_path):
    (bundle_copy["tree"] / "model.sig").unlink()
    res = edgepack("push", bundle_copy["tree"], f"{registry.host}/unsigned:1.0", "--insecure", env=registry.env)
    assert res.exit_code == 0 and "UNSIGNED" in res.output, res.output
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier download")
    before = snapshot(out)
    res = edgepack("pull", f"{registry.host}/unsigned:1.0", "--out", out, "--key", signing_keys["public"],
                   "--insecure", env=registry.env)
    assert res.exit_code == 2 and "refused: not signed (no model.sig)" in res.output, res.output
    assert snapshot(out) == before
    res = edgepack("pull", f"{registry.host}/unsigned:1.0", "--out", out, "--allow-unsigned", "--insecure",
                   env=registry.env)
    assert res.exit_code == 0 and "signature: none (--allow-unsigned)" in res.output, res.output
    assert (out / "tiny_net-tflite-int8" / "model.tflite").is_file() and not (out / "tiny_net-tflite-int8" / "model.sig").exists()


@pytest.mark.parametrize("title", ["../x", "/tmp/edgepack-escape-x", "a/../../x"])
def test_a_layer_name_that_would_escape_out_is_refused(title, registry, tiny_bundle, signing_keys, tmp_path,
                                                        monkeypatch):
    """The registry holds a manifest whose layer is named to land outside --out: published here
    through the same client, with one layer's title changed."""
    for key, value in registry.env.items():
        monkeypatch.setenv(key, value)
    ref = parse_ref(f"{registry.host}/evil:1", need="tag")
    with bundle_tree(tiny_bundle["zip"]) as tree, tempfile.TemporaryDirectory() as scratch:
        artifact = build_artifact(tree, inspect_bundle(tree)[0], Path(scratch))
        layer = next(layer for _, layer in artifact.blobs if layer.get("annotations", {}).get(TITLE) == "labels.txt")
        layer["annotations"][TITLE] = title
        open_store(ref, insecure=True).push(artifact, ["1"])
    out = tmp_path / "deep" / "out"
    res = edgepack("pull", f"{registry.host}/evil:1", "--out", out, "--key", signing_keys["public"], "--insecure")
    assert res.exit_code == 2, res.output
    assert f"layer {title!r} would land outside the bundle folder: refused" in res.output
    assert not (tmp_path / "deep").exists() and not Path("/tmp/edgepack-escape-x").exists()


def test_a_blob_tampered_in_the_registry_storage_is_refused(fresh_registry, tiny_bundle, signing_keys, tmp_path):
    server = fresh_registry()                  # its own storage: blobs are shared across repositories
    res = edgepack("push", tiny_bundle["zip"], f"{server.host}/digits:1.0", "--insecure", env=server.env)
    assert res.exit_code == 0, res.output
    model = (tiny_bundle["tree"] / "model.tflite").read_bytes()
    blob = server.blob_path("sha256:" + hashlib.sha256(model).hexdigest())
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF               # same size, one byte flipped, on the registry's disk
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    res = edgepack("pull", f"{server.host}/digits:1.0", "--out", out, "--key", signing_keys["public"], "--insecure",
                   env=server.env)
    assert res.exit_code == 2, res.output
    assert "model.tflite: the blob received has sha256:" in res.output and "refused" in res.output
    assert not out.exists()


def test_tls_registry_with_a_self_signed_certificate(fresh_registry, tiny_bundle, signing_keys, tmp_path):
    server = fresh_registry(tls=True)
    ref = f"{server.host}/digits:1.0"
    res = edgepack("push", tiny_bundle["zip"], ref, env=server.env)     # TLS, certificate not trusted
    assert res.exit_code == 1, res.output
    assert "TLS handshake failed" in res.output and "--ca-cert" in res.output
    res = edgepack("push", tiny_bundle["zip"], ref, "--ca-cert", server.cert, env=server.env)
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = edgepack("pull", ref, "--out", out, "--key", signing_keys["public"],
                   env=dict(server.env, EDGEPACK_REGISTRY_CA=str(server.cert)))
    assert res.exit_code == 0, res.output
    assert (out / tiny_bundle["zip"].name).read_bytes() == tiny_bundle["zip"].read_bytes()


@pytest.mark.parametrize("args,expected", [
    (["ls", "registry.example.com:5000/digits", "--insecure"], "--insecure (plain HTTP) is only for a registry on this machine"),
    (["pull", "digits:1.0", "--out", "x"], "no registry host"),
    (["pull", "https://localhost:5000/digits:1.0", "--out", "x"], "no scheme"),
    (["pull", "localhost:5000/Digits:1.0", "--out", "x"], "is not a repository name"),
    (["pull", "localhost:5000/digits", "--out", "x"], "give a tag (REF:tag) or a digest"),
    (["ls", "localhost:5000/digits:1.0"], "list a repository, without a tag or digest"),
])
def test_bad_references_exit_2(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = edgepack(*args)
    assert res.exit_code == 2 and expected in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_push_refuses_a_changed_bundle(registry, bundle_copy):
    (bundle_copy["tree"] / "labels.txt").write_text("changed\n")
    res = edgepack("push", bundle_copy["tree"], f"{registry.host}/changed:1.0", "--insecure", env=registry.env)
    assert res.exit_code == 2 and "labels.txt changed since the bundle was made" in res.output
    res = edgepack("ls", f"{registry.host}/changed", "--insecure", env=registry.env)
    assert res.exit_code == 0 and "no tags" in res.output
