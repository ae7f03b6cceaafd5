"""Where independent builds run: in this process, one after another (`local`, the default),
or as Ray tasks on a local Ray or an existing cluster (`ray`).

One interface for both: `map_unordered(fn, items)` yields `(index, result)` as each item
finishes, so the caller prints a line per finished build and never waits for the slowest.
`fn` must be a module-level function (a Ray worker imports it by name) that turns its own
errors into results; an exception that reaches the executor is a lost worker or a bug.

On Ray each item is one task with its CPU request. A task whose worker or node
dies is retried on another (`max_retries`); when retries run out its result is an
`ExecutorError`. The stage cache and the device locks (edgepack/locks.py) must lie on
storage every node reads: the executor hands the lock folder to its workers.
"""
from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import EdgepackError, UsageError
from .locks import LOCK_DIR_ENV

ExecutorKind = Literal["local", "ray"]


class ExecutorError(EdgepackError):
    """A cluster that cannot be reached, or a task lost with every retry (exit 1, like a device)."""

    exit_code = 1


@dataclass(frozen=True)
class Resources:
    """What one task asks of the executor. CPUs only: the stages that train run on the CPU
    (torch's CPU build is the one edgepack pins)."""

    cpus: float = 1.0


class Executor(ABC):
    kind: ExecutorKind

    @property
    @abstractmethod
    def workers(self) -> int:
        """How many tasks of one CPU run at once."""

    @abstractmethod
    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                      resources: Resources = Resources()) -> Iterator[tuple[int, Any]]:
        """(index, fn(items[index])) for every item, in the order they finish."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "workers": self.workers}

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Today's behaviour: in this process, in order."""

    kind = "local"

    @property
    def workers(self) -> int:
        return 1

    def map_unordered(self, fn, items, resources=Resources()):
        for i, item in enumerate(items):
            yield i, fn(item)


def _in_worker(fn: Callable[[Any], Any], item: Any, cwd: str, env: dict[str, str]) -> Any:
    """A Ray task's body: the driver's folder and environment first, so relative paths and
    the lock folder mean the same on every node (when the folder exists there)."""
    os.environ.update(env)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(item)


class RayExecutor(Executor):
    """Trials and builds as Ray tasks: a local Ray with `workers` CPUs, or the cluster at
    `address` ("auto" or host:port, as `ray start` printed it)."""

    kind = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None, lock_dir: Path,
                 max_retries: int = 3) -> None:
        import ray

        self.address, self.max_retries = address, max_retries
        # Workers' output stays in Ray's logs (a trial's result carries what the driver prints).
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                                      namespace="edgepack")
        if address and address != "auto":
            _reachable(address)
        self.env = {LOCK_DIR_ENV: str(Path(lock_dir).resolve())}
        Path(lock_dir).mkdir(parents=True, exist_ok=True)
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:    # "local": a new Ray, never one that $RAY_ADDRESS or /tmp/ray names
                ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ExecutorError(f"--executor ray: cannot start or join {where}: {str(e).splitlines()[0]}") from None
        self._ray = ray

    @property
    def workers(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        return {"kind": self.kind, "workers": self.workers, "nodes": len(nodes), "address": self.address or "local"}

    def map_unordered(self, fn, items, resources=Resources()):
        ray = self._ray
        task = ray.remote(_in_worker).options(num_cpus=resources.cpus,
                                              max_retries=self.max_retries, retry_exceptions=False)
        cwd = os.getcwd()
        pending = {task.remote(fn, item, cwd, self.env): i for i, item in enumerate(items)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    yield i, ray.get(ref)
                except ray.exceptions.RayTaskError as e:     # fn raised: a bug, passed on as it is
                    raise e.as_instanceof_cause() from None
                except ray.exceptions.RayError as e:         # worker or node lost, retries spent
                    yield i, ExecutorError(f"task lost after {self.max_retries} retries: "
                                           f"{type(e).__name__}: {str(e).splitlines()[0]}")

    def close(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a cluster that is not there: ray.init itself retries for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address {address!r}: expected HOST:PORT (the address `ray start --head` printed) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ExecutorError(f"--address {address}: cannot reach the Ray cluster ({e.strerror or e}); "
                            f"is `ray start --head --port {port}` running there?") from None


def make_executor(kind: str, *, address: str | None = None, workers: int | None = None,
                  lock_dir: Path) -> Executor:
    if kind == "local":
        if address:
            raise UsageError("--address joins a Ray cluster: it needs --executor ray")
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address, workers=workers, lock_dir=lock_dir)
    raise UsageError(f"--executor {kind!r}: expected local or ray")
