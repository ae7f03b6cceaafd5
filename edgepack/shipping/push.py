"""`edgepack push BUNDLE REF`: publish a checked bundle as an OCI artifact.

Tags, so that an app team can follow a target or pin a version: REF's own tag, the target
name (moves to the newest bundle pushed for that target) and `<target>-<version>` (the
version is --version, by default REF's tag). The bundle's hashes are checked first: a
bundle whose files changed since it was made is not published (exit 2).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..bundle import SIGNATURE, bundle_tree, intact_manifest
from ..errors import UsageError
from .artifact import build_artifact
from .refs import TAG, Ref, parse_ref
from .stores import open_store


@dataclass
class Pushed:
    ref: Ref
    digest: str
    tags: list[str]
    name: str
    target: str
    signed: bool
    files: int


def release_tags(tag: str, target: str, version: str | None) -> list[str]:
    version = version or tag
    tags = [tag, target] + ([f"{target}-{version}"] if version != target else [])
    for t in tags:
        if not TAG.fullmatch(t):
            raise UsageError(f"tag {t!r} is not valid (letters, digits, '_', '.', '-'; at most 128): "
                             "choose another --version")
    return list(dict.fromkeys(tags))


def push_bundle(bundle: Path, ref_text: str, *, version: str | None = None, insecure: bool = False,
                ca_cert: Path | None = None, on_blob: Callable[[str], None] = lambda _: None) -> Pushed:
    ref = parse_ref(ref_text, need="tag")
    with bundle_tree(bundle) as tree:
        manifest = intact_manifest(tree, named=bundle, refusing="not pushing it")
        target = str(manifest.get("target") or "")
        tags = release_tags(ref.tag, target, version) if target else [ref.tag]
        store = open_store(ref, insecure=insecure, ca_cert=ca_cert, create=True)
        with tempfile.TemporaryDirectory(prefix="edgepack-push-") as scratch:
            artifact = build_artifact(tree, manifest, Path(scratch))
            digest = store.push(artifact, tags, on_blob)
        return Pushed(ref, digest, tags, str(manifest.get("name")), target, (tree / SIGNATURE).is_file(),
                      len(artifact.blobs) - 1)
