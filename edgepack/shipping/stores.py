"""Open the store a reference names: a registry (oras-py) or an OCI layout folder. Both
answer push(artifact, tags), resolve(tag or digest), fetch(digest, dest, size) and tags()."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .layout import LayoutStore
from .refs import Ref
from .registry import RegistryStore


def open_store(ref: Ref, *, insecure: bool = False, ca_cert: Path | None = None,
               create: bool = False) -> LayoutStore | RegistryStore:
    if ref.kind == "layout":
        if insecure or ca_cert:
            raise UsageError(f"{ref}: --insecure and --ca-cert are for a registry, not a file:// folder")
        return LayoutStore(ref, create=create)
    return RegistryStore(ref, insecure=insecure, ca_cert=ca_cert)
