"""Is this bundle the one that was built? Every sha256 in manifest.json, and the signature
(model.sig) with the signer's public key.

One structured result for every caller: `edgepack verify` (edgepack/verify.py, before any
device runs) and `edgepack pull` (on the staged download, before anything lands).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..bundle import SIGNATURE, bundle_tree, inspect_bundle
from .signing import check_signature

SignatureStatus = Literal["valid", "invalid", "unsigned", "not checked"]


@dataclass
class Integrity:
    bundle: Path
    manifest: dict[str, Any]
    files: list[tuple[str, bool]]               # (file, sha256 matches manifest.json)
    signature: SignatureStatus
    signer: str | None = None                   # fingerprint of the key that signed, when valid
    key: Path | None = None                     # the public key it was checked with
    problems: list[str] = field(default_factory=list)   # one line each, naming the file or key

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe_signature(self) -> str:
        return {"valid": f"valid, key {self.signer}" + (f" ({self.key.name})" if self.key else ""),
                "invalid": "INVALID", "unsigned": "none (no model.sig)",
                "not checked": "model.sig present, not checked (no --key)"}[self.signature]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.signature, "signer": self.signer, "key": self.key.name if self.key else None,
                "problems": self.problems}


def check_tree(tree: Path, public_key: Path | None = None, *, require_signature: bool | None = None,
               label: Path | None = None) -> Integrity:
    """Check a bundle folder. `require_signature` (default: whether a key is given) makes a
    missing signature, or one there is no key to check, a problem."""
    require = public_key is not None if require_signature is None else require_signature
    manifest, checks = inspect_bundle(tree)
    listed = manifest.get("files", {})
    problems = [f"{f}: not listed in manifest.json" if f not in listed
                else f"{f}: missing" if not (tree / f).is_file()
                else f"{f}: sha256 does not match manifest.json" for f, ok in checks if not ok]
    signed = (tree / SIGNATURE).is_file()
    status: SignatureStatus
    signer = None
    if signed and public_key is not None:
        check = check_signature(tree, public_key)
        status, signer = ("valid" if check.valid else "invalid"), check.signer
        if check.problem:
            problems.append(check.problem)
    elif signed:
        status = "not checked"
        if require:
            problems.append(f"{SIGNATURE}: no public key to check the signature with (--key PUBLIC.pem)")
    else:
        status = "unsigned"
        if require:
            problems.append(f"not signed (no {SIGNATURE})")
    return Integrity(Path(label or tree), manifest, checks, status, signer if status == "valid" else None,
                        Path(public_key) if public_key else None, problems)


def check_bundle(path: Path, public_key: Path | None = None, *,
                 require_signature: bool | None = None) -> Integrity:
    """Check a bundle given as its tree or its zip (unpacked to a temporary folder)."""
    with bundle_tree(path) as tree:
        return check_tree(tree, public_key, require_signature=require_signature, label=Path(path))
