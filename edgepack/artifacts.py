"""Artifacts passed between stages, and the content hashes that key the cache."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One file a stage produced (or the user gave), plus what later stages need to know.

    kind: "torch" (a pickled nn.Module in the cache), "onnx", "tflite", "openvino",
    "pte"; path: the main file (an OpenVINO .xml has its .bin beside it);
    meta: small JSON-able facts (input shape, layout, quantization, …).
    """

    kind: str
    path: Path
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, kind: str, path: str | os.PathLike, **meta: Any) -> "Artifact":
        p = Path(path)
        return cls(kind=kind, path=p, sha256=sha256_file(p), meta=dict(meta))

    @property
    def size_bytes(self) -> int:
        """Size of the artifact on disk, counting side files (e.g. OpenVINO's .bin)."""
        # Side files are named relative to the artifact's own folder, not the working directory.
        return self.path.stat().st_size + sum((self.path.parent / f).stat().st_size
                                              for f in self.meta.get("side_files", []))

    def to_json(self, root: Path) -> dict[str, Any]:
        return {"kind": self.kind, "path": os.path.relpath(self.path, root), "sha256": self.sha256, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict[str, Any], root: Path) -> "Artifact":
        return cls(kind=d["kind"], path=(root / d["path"]).resolve(), sha256=d["sha256"], meta=d.get("meta", {}))


# An absolute path: "/" not inside a word or URL, one or more folders, then the last part.
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`:,;()\[\]]+/)+[^\s/'\"`:,;()\[\]]*")


def _last_part(m: re.Match) -> str:
    path = m.group(0)
    return path.rstrip("/").rsplit("/", 1)[-1] + ("/" if path.endswith("/") else "")


def strip_paths(obj: Any) -> Any:
    """obj (JSON-like) with every absolute path cut to its last part: a bundle travels to
    other machines and says what its inputs were by name and content hash, never by where
    they lay on the build machine."""
    if isinstance(obj, str):
        return _ABS_PATH.sub(_last_part, obj)
    if isinstance(obj, dict):
        return {k: strip_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strip_paths(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write then rename: a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)          # mkstemp makes 0600; bundles are for others to read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
