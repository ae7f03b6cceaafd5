"""A bundle as an OCI artifact: one layer per file, typed by edgepack media types, and
manifest annotations that let `edgepack ls` (or any OCI tool) tell bundles apart without
downloading them. The same manifest goes to a registry and to an OCI layout on disk.

    artifactType  application/vnd.edgepack.bundle.v1
    config        application/vnd.edgepack.bundle.config.v1+json  {schema, name, target, format}
    layers        one per file, title annotation = its path in the bundle, sorted by path
    annotations   org.opencontainers.image.{title,created}, dev.edgepack.{target, format, scheme,
                  metric, metric.value, metric.unit, passed, size_bytes, p50_ms.<device>,
                  edgepack_version, recipe_hash, signed}

The manifest depends on the bundle alone (no push time, no tag), so pushing the same
bundle twice gives the same digest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import SCHEMA, SIGNATURE, is_safe_relpath
from ..errors import UsageError
from .refs import DIGEST

ARTIFACT_TYPE = "application/vnd.edgepack.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.edgepack.bundle.config.v1+json"
TITLE = "org.opencontainers.image.title"
PREFIX = "dev.edgepack."

_BY_NAME = {
    "manifest.json": "application/vnd.edgepack.manifest.v1+json",
    "report.json": "application/vnd.edgepack.report.v1+json",
    "report.md": "application/vnd.edgepack.report.v1+markdown",
    "reference.npz": "application/vnd.edgepack.reference.v1+npz",
    "labels.txt": "application/vnd.edgepack.labels.v1+text",
    SIGNATURE: "application/vnd.edgepack.signature.v1+json",      # a Sigstore bundle (model-signing)
}


def media_type(name: str, manifest: dict[str, Any]) -> str:
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name == manifest.get("model") or name in manifest.get("side_files", []):
        return f"application/vnd.edgepack.model.v1.{manifest.get('format') or 'bin'}"
    if name.endswith(".png"):
        return "image/png"
    return "application/vnd.edgepack.file.v1"


def annotations(manifest: dict[str, Any], report: dict[str, Any], signed: bool) -> dict[str, str]:
    """What an app team picks a bundle by, from the bundle's own manifest and report."""
    prov = manifest.get("provenance", {})
    acc = report.get("accuracy") or {}
    ann = {
        TITLE: manifest.get("name", ""),
        "org.opencontainers.image.created": prov.get("created_at", ""),
        PREFIX + "target": manifest.get("target", ""),
        PREFIX + "format": manifest.get("format", ""),
        PREFIX + "scheme": str(manifest.get("scheme")),
        PREFIX + "metric": str(acc.get("metric", "")),
        PREFIX + "metric.value": "" if acc.get("value") is None else f"{acc['value']:.6g}",
        PREFIX + "metric.unit": str(acc.get("unit") or ""),
        PREFIX + "passed": str(bool(report.get("passed"))).lower(),
        PREFIX + "size_bytes": str((report.get("artifact") or {}).get("size_bytes", "")),
        PREFIX + "edgepack_version": prov.get("edgepack_version", ""),
        PREFIX + "recipe_hash": prov.get("recipe_hash", ""),
        PREFIX + "signed": str(signed).lower(),
    }
    for dev in report.get("devices", []):
        p50 = (dev.get("latency_ms") or {}).get("p50")
        if p50 is not None:
            ann[f"{PREFIX}p50_ms.{dev['name']}"] = f"{p50:.6g}"
    return {k: v for k, v in ann.items() if v != ""}


@dataclass
class Artifact:
    manifest: dict[str, Any]            # the OCI image manifest
    blobs: list[tuple[Path, dict]]      # (file, its layer descriptor), config last
    config: bytes


def build_artifact(tree: Path, bundle_manifest: dict[str, Any], scratch: Path) -> Artifact:
    """The OCI manifest and blobs of a checked bundle folder; the config blob is written to scratch."""
    import oras.oci

    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    report = json.loads((tree / "report.json").read_text()) if (tree / "report.json").is_file() else {}
    blobs = []
    for rel in files:
        layer = oras.oci.NewLayer(str(tree / rel), media_type=media_type(rel, bundle_manifest))
        layer["annotations"] = {TITLE: rel}
        blobs.append((tree / rel, layer))
    config = json.dumps({"schema": SCHEMA, "name": bundle_manifest.get("name"), "target": bundle_manifest.get("target"),
                         "format": bundle_manifest.get("format")}, sort_keys=True).encode()
    config_file = scratch / "config.json"
    config_file.write_bytes(config)
    conf, _ = oras.oci.ManifestConfig(str(config_file), CONFIG_MEDIA_TYPE)
    manifest = oras.oci.NewManifest()
    manifest["artifactType"] = ARTIFACT_TYPE
    manifest["config"] = conf
    manifest["layers"] = [layer for _, layer in blobs]
    manifest["annotations"] = annotations(bundle_manifest, report, signed=SIGNATURE in files)
    return Artifact(manifest, [*blobs, (config_file, conf)], config)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes a registry stores (oras-py sends the manifest through requests' json=, whose
    serialisation this is), so a layout on disk holds the same digest as a registry."""
    return json.dumps(manifest).encode()


def check_layers(manifest: dict[str, Any], where: str) -> list[tuple[str, str, int]]:
    """(title, digest, size) of every layer of a fetched manifest, refusing (exit 2) anything
    that is not an edgepack bundle or whose layer would land outside the bundle folder."""
    config = manifest.get("config") or {}
    if config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise UsageError(f"{where}: not an edgepack bundle (config media type {config.get('mediaType')!r}, "
                         f"expected {CONFIG_MEDIA_TYPE})")
    layers, seen = [], set()
    for layer in manifest.get("layers") or []:
        title = (layer.get("annotations") or {}).get(TITLE)
        if not isinstance(title, str) or not is_safe_relpath(title):
            raise UsageError(f"{where}: layer {title!r} would land outside the bundle folder: refused")
        digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise UsageError(f"{where}: layer {title}: digest {digest!r} is not sha256:<64 hex digits>")
        if not isinstance(size, int) or size < 0:
            raise UsageError(f"{where}: layer {title}: size {size!r} is not a byte count")
        if title in seen:
            raise UsageError(f"{where}: layer {title} appears twice")
        seen.add(title)
        layers.append((title, digest, size))
    if "manifest.json" not in seen:
        raise UsageError(f"{where}: no manifest.json layer: not an edgepack bundle")
    return layers


def summary(annotations: dict[str, str]) -> dict[str, Any]:
    """The annotations as typed values, for `edgepack ls`."""
    a = annotations or {}

    def num(key: str) -> float | None:
        try:
            return float(a[PREFIX + key])
        except (KeyError, ValueError):
            return None

    size = num("size_bytes")
    return {
        "name": a.get(TITLE), "target": a.get(PREFIX + "target"), "format": a.get(PREFIX + "format"),
        "scheme": a.get(PREFIX + "scheme"), "metric": a.get(PREFIX + "metric"), "value": num("metric.value"),
        "unit": a.get(PREFIX + "metric.unit"), "passed": a.get(PREFIX + "passed") == "true",
        "size_bytes": int(size) if size is not None else None,
        "p50_ms": {k[len(PREFIX + "p50_ms."):]: float(v) for k, v in a.items() if k.startswith(PREFIX + "p50_ms.")},
        "edgepack_version": a.get(PREFIX + "edgepack_version"), "recipe_hash": a.get(PREFIX + "recipe_hash"),
        "signed": a.get(PREFIX + "signed") == "true", "created": a.get("org.opencontainers.image.created"),
    }
