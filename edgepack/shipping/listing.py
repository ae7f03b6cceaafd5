"""`edgepack ls REPO`: every tag with what its annotations say (target, metric, size, p50),
read from the manifests alone: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import CONFIG_MEDIA_TYPE, summary
from .refs import parse_ref
from .stores import open_store


def list_bundles(ref_text: str, *, insecure: bool = False, ca_cert: Path | None = None) -> list[dict[str, Any]]:
    ref = parse_ref(ref_text, need="repository")
    store = open_store(ref, insecure=insecure, ca_cert=ca_cert)
    rows = []
    for tag in sorted(set(store.tags())):
        manifest, digest = store.resolve(tag)
        rows.append({"tag": tag, "digest": digest,
                     "bundle": (manifest.get("config") or {}).get("mediaType") == CONFIG_MEDIA_TYPE,
                     **summary(manifest.get("annotations") or {})})
    return rows
