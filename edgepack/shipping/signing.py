"""Signing a bundle with OpenSSF model-signing and a local elliptic-curve key.

The signature is a Sigstore bundle (a DSSE envelope over an in-toto statement that lists
every file of the bundle with its sha256), written to model.sig at the bundle's root. It
covers manifest.json and every other file; manifest.json does not list it, so signing
changes no hash that the manifest holds. Local keys only (P-256, P-384, P-521 PEM): no
Sigstore, no keyless flow, no network.

Quirks of model-signing 1.0.1 (the newest release that installs beside litert-torch: 1.1
needs typing-extensions >= 4.14, which litert-converter's xdsl pin refuses):
- `signing.Config()` builds a keyless Sigstore signer in its constructor, which fetches
  Sigstore's TUF metadata over the network (TUFError without it) even when a key signer
  replaces it right after. The Config is made without its constructor here, then given
  its hashing config and key signer through its public methods. Later releases make that
  signer lazy.
- Verifying raises cryptography's InvalidSignature when another key signed, and a bare
  ValueError("Signature mismatch") when a file changed; neither names a file or a key, so
  the files are named from the signed statement (read once its signature checked out) and
  the keys by their fingerprints (the signature carries its signer's public key).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import sha256_file
from ..bundle import (
    SIGNATURE,
    bundle_tree,
    intact_manifest,
    republish,
    split_bundle_path,
)
from ..errors import UsageError


def fingerprint(public_key: Any) -> str:
    """SHA256:<16 hex> of the key's DER SubjectPublicKeyInfo: names a key in one line."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()[:16]


def _read_key(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {path}: key file not found")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read the key ({e.strerror or e})") from None


def _check_curve(key: Any, path: Path, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise UsageError(f"{what} {path}: a {type(key).__name__.lstrip('_')}; model-signing takes elliptic-curve keys "
                         "(P-256, P-384, P-521), e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`")
    if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise UsageError(f"{what} {path}: curve {key.curve.name} is not one model-signing takes (P-256, P-384, P-521)")


def load_private_key(path: Path, what: str = "--key") -> Any:
    """The PEM private key at `path`, or UsageError naming the file and what is wrong."""
    from cryptography.hazmat.primitives import serialization

    data = _read_key(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{what} {path}: the private key is encrypted; give an unencrypted PEM key "
                         "(keep it out of the repository)") from None
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"{what} {path}: not a PEM private key") from None
    _check_curve(key, Path(path), what)
    return key


def load_public_key(path: Path, what: str = "--key") -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read_key(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnicodeDecodeError):
        hint = " (that is a private key: verify with its public half, `openssl ec -in KEY -pubout`)" \
            if b"PRIVATE KEY" in data else ""
        raise UsageError(f"{what} {path}: not a PEM public key{hint}") from None
    _check_curve(key, Path(path), what)
    return key


def _hashing_config(tree: Path) -> Any:
    import model_signing

    # Every file but the signature itself; a bundle has no git files to skip.
    return model_signing.hashing.Config().set_ignored_paths(paths=[tree / SIGNATURE], ignore_git_paths=False)


def sign_tree(tree: Path, private_key: Path) -> str:
    """Write <tree>/model.sig over every other file of the tree. Returns the key's fingerprint."""
    import model_signing

    key = load_private_key(private_key)
    config = model_signing.signing.Config.__new__(model_signing.signing.Config)   # see the module docstring
    config.set_hashing_config(_hashing_config(tree)).use_elliptic_key_signer(private_key=Path(private_key))
    config.sign(tree, tree / SIGNATURE)
    return fingerprint(key.public_key())


@dataclass
class SignatureCheck:
    valid: bool
    problem: str | None = None     # one line naming the file(s) or the key at fault
    signer: str | None = None      # fingerprint of the key the signature says made it


def _envelope(sig: Path) -> dict[str, Any]:
    """The parts of model.sig read here: the signer's public key and the signed statement.
    Only for naming files and keys; trust comes from model-signing's check alone."""
    doc = json.loads(sig.read_text())
    return {"public_key": base64.b64decode(doc["verificationMaterial"]["publicKey"]["rawBytes"]),
            "statement": json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))}


def _signer(sig: Path) -> str | None:
    from cryptography.hazmat.primitives import serialization

    try:
        return fingerprint(serialization.load_pem_public_key(_envelope(sig)["public_key"]))
    except Exception:  # noqa: BLE001 -- a signature too damaged to name its signer: the check says so
        return None


def _changed_files(tree: Path, sig: Path) -> list[str]:
    """Files whose sha256 differs from the signed statement's, and files it does not list."""
    signed = {r["name"]: r["digest"] for r in _envelope(sig)["statement"]["predicate"]["resources"]}
    actual = {p.relative_to(tree).as_posix(): sha256_file(p) for p in sorted(tree.rglob("*"))
              if p.is_file() and p.name != SIGNATURE}
    return sorted(n for n in signed.keys() | actual.keys() if signed.get(n) != actual.get(n))


def check_signature(tree: Path, public_key: Path) -> SignatureCheck:
    """Check <tree>/model.sig with the public key: made by that key, over exactly these files."""
    import model_signing
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    sig = tree / SIGNATURE
    if not sig.is_file():
        return SignatureCheck(False, f"not signed (no {SIGNATURE})")
    signer = _signer(sig)
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    config.set_hashing_config(_hashing_config(tree))
    try:
        config.verify(tree, sig)
    except InvalidSignature:
        made_by = f"key {signer}" if signer else "another key"
        return SignatureCheck(False, f"{SIGNATURE}: signed by {made_by}, not by {Path(public_key).name} "
                                     f"(key {fingerprint(key)})", signer)
    except ValueError as e:
        if "mismatch" not in str(e).lower():
            return SignatureCheck(False, f"{SIGNATURE}: unreadable signature ({e})", signer)
        changed = _changed_files(tree, sig)
        return SignatureCheck(False, f"{', '.join(changed) or 'the bundle'}: changed since the bundle was signed "
                                     f"({SIGNATURE} does not match)", signer)
    except Exception as e:  # noqa: BLE001 -- a damaged model.sig: the parser's many errors read the same to a user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return SignatureCheck(False, f"{SIGNATURE}: unreadable signature ({first})", signer)
    return SignatureCheck(True, None, signer)


@dataclass
class Signed:
    tree: Path
    zip: Path
    fingerprint: str
    files: int            # files manifest.json lists (the signature covers them and manifest.json)


def sign_bundle(bundle: Path, private_key: Path) -> Signed:
    """Sign a bundle (tree or zip) in place: its hashes are checked first (a changed bundle is
    not signed, exit 2); then tree and zip are republished together with model.sig."""
    load_private_key(private_key)
    folder, name = split_bundle_path(bundle)
    with bundle_tree(bundle) as src:
        manifest = intact_manifest(src, named=bundle, refusing="not signing it")
        marks: list[str] = []
        tree, zip_path = republish(src, folder, name, sign=lambda t: marks.append(sign_tree(t, private_key)))
    return Signed(tree, zip_path, marks[0], len(manifest.get("files", {})))
