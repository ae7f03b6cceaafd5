"""`edgepack pull REF --out DIR`: download a bundle, check it, and only then let it land.

Every blob goes to a temporary staging folder outside DIR. Before anything lands, each
layer's name must stay inside the bundle folder, each blob must match the digest its
manifest names, each file must match manifest.json's sha256, and the signature must
check out with the given public key (an unsigned bundle only with --allow-unsigned).
Then the bundle is swapped into DIR as a tree and a zip, like a build's (bundle.py); a
refusal leaves DIR as it was (not even created). Exit 2 for a refusal, 1 for a registry
that cannot be reached.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import sha256_file
from ..bundle import is_safe_relpath, republish
from ..errors import UsageError
from .artifact import check_layers
from .integrity import Integrity, check_tree
from .refs import Ref, parse_ref
from .stores import open_store


@dataclass
class Pulled:
    ref: Ref
    digest: str
    tree: Path
    zip: Path
    blobs: int
    integrity: Integrity


def pull_bundle(ref_text: str, out_dir: Path, *, public_key: Path | None = None, allow_unsigned: bool = False,
                insecure: bool = False, ca_cert: Path | None = None,
                on_blob: Callable[[str], None] = lambda _: None) -> Pulled:
    ref = parse_ref(ref_text, need="tag-or-digest")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a folder")
    store = open_store(ref, insecure=insecure, ca_cert=ca_cert)
    manifest, digest = store.resolve(ref.reference)
    where = f"{ref.repo_text}@{digest}"
    layers = check_layers(manifest, where)
    with tempfile.TemporaryDirectory(prefix="edgepack-pull-") as staging:
        tree = Path(staging) / "bundle"
        tree.mkdir()
        for title, blob, size in layers:
            dest = tree / title
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.fetch(blob, dest, size)
            actual = "sha256:" + sha256_file(dest)
            if actual != blob or dest.stat().st_size != size:
                raise UsageError(f"{where}: {title}: the blob received has {actual}, not the {blob} its manifest "
                                 "names (changed in the registry's storage, or in transit): refused")
            on_blob(title)
        check = check_tree(tree, public_key, require_signature=not allow_unsigned, label=Path(str(ref)))
        if not check.ok:
            hint = " (--allow-unsigned accepts an unsigned bundle)" if check.signature == "unsigned" else ""
            raise UsageError(f"{ref}: refused: " + "; ".join(check.problems) + hint)
        name = str(check.manifest.get("name") or "")
        if "/" in name or not is_safe_relpath(name):
            raise UsageError(f"{where}: manifest.json names the bundle {name!r}, not a plain folder name: refused")
        final, zip_path = republish(tree, out_dir, name)
    return Pulled(ref, digest, final, zip_path, len(layers), check)
