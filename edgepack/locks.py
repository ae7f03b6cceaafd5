"""Cross-process locks, for builds that run side by side (search trials, `--executor ray`).

- One per stage-cache entry, in the cache's `.locks/`: two builds that need the same distilled student
  wait for one of them to make it, then both read it from the cache.
- One per device, in $EDGEPACK_LOCK_DIR when it is set: a board (or this machine's
  cores) measures one bundle at a time, so concurrent builds never time each other's
  load. The executors set it to a folder every worker can read; a single build has
  nothing to contend with and takes no device lock.

They are `flock` locks (filelock): the kernel drops one when its process dies, so a
worker killed mid-stage never leaves an entry locked.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

LOCK_DIR_ENV = "EDGEPACK_LOCK_DIR"


def entry_lock(cache_root: Path, stage: str, key: str) -> FileLock:
    """The lock of one cache entry, in the cache's `.locks/` (not beside the entries, which
    are folders only)."""
    folder = cache_root / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{stage}-{key}.lock"))


def device_lock_name(device: Any) -> str:
    """A device is one piece of hardware: `host` and the emulator are this machine's
    (each node of a cluster has its own), a board is its ssh address."""
    where = getattr(device, "host", None) or socket.gethostname()
    return f"{device.name}@{where}"


@contextlib.contextmanager
def device_lock(device: Any) -> Iterator[None]:
    folder = os.environ.get(LOCK_DIR_ENV)
    if not folder:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in device_lock_name(device))
    with FileLock(str(Path(folder) / f"device-{name}.lock")):
        yield
