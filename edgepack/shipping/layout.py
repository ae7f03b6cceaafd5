"""An OCI image layout on disk (`file://PATH`): a registry for teams without one.

    PATH/oci-layout        {"imageLayoutVersion": "1.0.0"}
    PATH/index.json        an image index: one entry per tag, the tag in the
                           org.opencontainers.image.ref.name annotation
    PATH/blobs/sha256/<hex>  every blob and manifest, named by its digest

oras-py 0.2.43 reads and validates a layout (`oras.layout.Layout`) and copies one to and
from a registry, but cannot put files into one; writing is done here, with the same
manifest and blobs as a registry push (artifact.py), each file written atomically and
index.json last, so an interrupted push leaves the previous tags as they were.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_bytes, atomic_write_json
from ..errors import UsageError
from .artifact import ARTIFACT_TYPE, Artifact, manifest_bytes
from .refs import DIGEST, Ref

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


class LayoutStore:
    """push / resolve / fetch / tags on an OCI image layout folder."""

    def __init__(self, ref: Ref, *, create: bool = False):
        self.ref, self.root = ref, Path(ref.location)
        self.where = ref.repo_text
        if self.root.exists():
            self._validate()
        elif not create:
            raise UsageError(f"{self.where}: no such folder")

    def _validate(self) -> None:
        import oras.layout

        try:
            oras.layout.Layout(str(self.root)).validate()
        except (FileNotFoundError, ValueError, OSError) as e:
            if self.root.is_dir() and not any(self.root.iterdir()):
                return                      # an empty folder: a layout yet to be written
            raise UsageError(f"{self.where}: not an OCI image layout ({(str(e).splitlines() or [''])[0]})") from None

    def _blob(self, digest: str) -> Path:
        if not DIGEST.fullmatch(digest):
            raise UsageError(f"{self.where}: {digest!r} is not sha256:<64 hex digits>")
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def _index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        if not path.is_file():
            return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: unreadable ({e})") from None

    def push(self, artifact: Artifact, tags: list[str], on_blob: Callable[[str], None] = lambda _: None) -> str:
        for path, layer in artifact.blobs:
            dest = self._blob(layer["digest"])
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                shutil.copyfile(path, tmp)
                tmp.replace(dest)
            on_blob(path.name)
        data = manifest_bytes(artifact.manifest)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self._blob(digest), data)
        if not (self.root / "oci-layout").exists():
            atomic_write_json(self.root / "oci-layout", {"imageLayoutVersion": "1.0.0"})
        index = self._index()
        entries = [m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) not in tags]
        entries += [{"mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE, "digest": digest,
                     "size": len(data), "annotations": {REF_NAME: tag}} for tag in tags]
        atomic_write_json(self.root / "index.json", dict(index, manifests=entries))
        return digest

    def resolve(self, reference: str) -> tuple[dict[str, Any], str]:
        if reference.startswith("sha256:"):
            digest = reference
        else:
            hits = [m["digest"] for m in self._index().get("manifests", [])
                    if (m.get("annotations") or {}).get(REF_NAME) == reference]
            if not hits:
                raise UsageError(f"{self.where}: no tag {reference} (tags: {', '.join(sorted(self.tags())) or 'none'})")
            digest = hits[-1]
        path = self._blob(digest)
        if not path.is_file():
            raise UsageError(f"{self.where}: no artifact {digest}")
        data = path.read_bytes()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise UsageError(f"{self.where}: the manifest stored as {digest} has digest {actual}: refused")
        try:
            return json.loads(data), digest
        except ValueError:
            raise UsageError(f"{self.where}: the manifest {digest} is not JSON") from None

    def fetch(self, digest: str, dest: Path, size: int) -> None:
        src = self._blob(digest)
        if not src.is_file():
            raise UsageError(f"{self.where}: blob {digest} is missing (for {dest.name})")
        if src.stat().st_size > size:
            raise UsageError(f"{self.where}: blob {digest} holds more than the {size} bytes the manifest names "
                             f"for {dest.name}: refused")
        shutil.copyfile(src, dest)

    def tags(self) -> list[str]:
        return [t for m in self._index().get("manifests", []) if (t := (m.get("annotations") or {}).get(REF_NAME))]
