"""A real two-node Ray cluster on this machine for the search and `--executor ray` tests.

`RayCluster()` (a context manager) runs the Ray CLI twice, as a cluster of two machines
would: `ray start --head --block` with the GCS on a free port, then `ray start --address
127.0.0.1:PORT --block` for one worker node, each in a session of its own (Popen with
start_new_session), so that stopping the cluster, or killing the worker node with
`kill_worker_node()` (a machine dying mid-task), signals exactly the processes started
here; `start_worker_node()` brings a fresh worker node back. It never runs `ray stop`,
which would stop every Ray of this user on the machine.

Each node has its own short temp dir (Ray's unix socket paths, under
TEMP/session_<date>_<pid>/sockets/, must stay below the 107-byte limit, so never a pytest
tmp_path), small CPU counts, a 100 MB object store, no dashboard and no usage stats.
The nodes' environment carries OMP_NUM_THREADS=1 and a PYTHONPATH that starts with the
folder the test's own `edgepack` comes from, so that task workers import the same code.

Quirks seen with Ray 2.60.0 (minimal install, no `ray[default]`):
- `127.0.0.1` (the GCS address, `--node-ip-address`) is resolved to the machine's
  outward interface address: nodes register as e.g. 192.0.2.2, and the GCS and raylets
  listen on all interfaces whatever is asked. Connecting through 127.0.0.1 works.
- SIGTERM to `ray start --block` first asks the GCS to drain the node, for up to 30 s
  (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S); the nodes run with it set to 0.
- A dead node is noticed by the GCS's health checks (by default every 3 s, 5 failures);
  they run here every 500 ms with 3 failures, so a killed node is dead within ~2 s.
- `ray start` and `ray status` succeed before the node's raylet has registered; the
  cluster is ready when the GCS lists both nodes alive (`wait_alive`).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import psutil

# The `ray` script of the test's own environment (a venv's bin/), not whichever is first on PATH.
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"

# Settings every node process reads (Python and the C++ RayConfig, RAY_<name>).
NODE_ENV = {
    "OMP_NUM_THREADS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",                # no usage report to anyscale.com
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops at once instead of draining 30 s
    "RAY_health_check_period_ms": "500",           # a killed node is marked dead in ~2 s, not ~15 s
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    # Without it `ray start` turns token auth on as soon as ~/.ray/auth_token exists (a local
    # ray.init() writes one): the cluster should not depend on what HOME holds.
    "RAY_AUTH_MODE": "disabled",
}

# Asks the GCS itself (`ray status` answers before the raylets register; a driver's ray.init
# needs a raylet): exits 0 once `want` nodes are alive, printing the count as it changes.
WAIT_ALIVE = """
import sys, time
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
address, want, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
client, seen = GcsClient(address=address), -1
while time.monotonic() < deadline:
    try:
        alive = sum(info.state == GcsNodeInfo.GcsNodeState.ALIVE
                    for info in client.get_all_node_info(timeout=2).values())
    except Exception as e:
        alive = f"GCS not answering ({type(e).__name__})"
    if alive != seen:
        print("alive:", alive, flush=True)
        seen = alive
    if alive == want:
        sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgepack_root() -> str | None:
    """The folder the test's `edgepack` is imported from (a worktree, or the editable checkout)."""
    spec = importlib.util.find_spec("edgepack")
    return str(Path(spec.origin).parent.parent) if spec and spec.origin else None


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with NODE_ENV, `extra`, and the test's edgepack first on PYTHONPATH."""
    env = {**os.environ, **NODE_ENV, **(extra or {})}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    root = edgepack_root()
    if root and root not in paths:
        paths.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class RayNode:
    """One `ray start --block` process (the leader of its own session) and its log."""

    def __init__(self, name: str, args: list[str], temp_dir: Path, env: dict[str, str]):
        self.name, self.temp_dir = name, temp_dir
        self.log = temp_dir / f"{name}.log"
        temp_dir.mkdir(parents=True, exist_ok=True)
        # setpriv (util-linux) makes `ray start` receive SIGTERM, and stop its node, should the
        # test process die without tearing the cluster down (a pytest-timeout kill, a crash).
        orphan_guard = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*orphan_guard, RAY, "start", *args, "--temp-dir", str(temp_dir), "--block"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         cwd=temp_dir, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process, its descendants and anything left in its process group
        (raylet, object store, agents, task workers)."""
        found: dict[int, psutil.Process] = {}
        try:
            leader = psutil.Process(self.proc.pid)
            found[leader.pid] = leader
            found.update((p.pid, p) for p in leader.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    found[p.pid] = p
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return list(found.values())

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as if its machine had died."""
        doomed = self.processes()
        for p in doomed:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(doomed, timeout=10)
        survivors = [p for p in alive if _status(p) not in (psutil.STATUS_ZOMBIE, None)]
        if survivors:
            raise RuntimeError(f"the {self.name} node's processes survived SIGKILL: {survivors}")

    def stop(self, grace_s: float = 5) -> None:
        """SIGTERM to `ray start`, which stops its processes in order; SIGKILL what is left."""
        survivors = self.processes()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(survivors, timeout=1)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        """The end of `ray start`'s own output and of the raylet's log (why a node did not come up)."""
        parts = []
        for path in [self.log, *sorted(self.temp_dir.glob("session_2*/logs/raylet.out"))]:
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)


def _status(p: psutil.Process) -> str | None:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return None


class RayCluster:
    """A head node and one worker node on this machine; `address` is the GCS ("127.0.0.1:PORT")."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, timeout_s: float = 120,
                 env: dict[str, str] | None = None):
        self.head_cpus, self.worker_cpus, self.timeout_s = head_cpus, worker_cpus, timeout_s
        self.env = node_env(env)
        self.root: Path | None = None
        self.head: RayNode | None = None
        self.worker: RayNode | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _node_args(self, cpus: int) -> list[str]:
        return ["--num-cpus", str(cpus), "--num-gpus", "0", "--object-store-memory", str(100 * 2**20),
                "--disable-usage-stats", "--log-style", "record", "--log-color", "false"]

    def start(self) -> Self:
        """Start both nodes and wait until the GCS lists them alive; on failure, stop what was
        started and raise RuntimeError with the end of the nodes' logs."""
        # /tmp, not the test's tmp_path: the socket paths beneath must stay short.
        self.root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port = free_port()
        try:
            # No --node-ip-address: Ray would turn 127.0.0.1 into the outward address anyway.
            # The client server cannot be left out (port 0 is refused); --no-monitor drops
            # the autoscaler, which a fixed cluster does not need.
            self.head = RayNode("head", ["--head", "--port", str(self.port), "--no-monitor",
                                         "--ray-client-server-port", str(free_port()),
                                         "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                                         *self._node_args(self.head_cpus)], self.root / "head", self.env)
            self.start_worker_node()
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker_node(self) -> None:
        """(Re)start the worker node, for instance after kill_worker_node(); it gets a new node id."""
        self.worker = RayNode("worker", ["--address", self.address, *self._node_args(self.worker_cpus)],
                              Path(tempfile.mkdtemp(prefix="w", dir=self.root)), self.env)
        self._wait_alive(2)

    def _wait_alive(self, nodes: int) -> None:
        poll = subprocess.Popen([sys.executable, "-c", WAIT_ALIVE, self.address, str(nodes), str(self.timeout_s)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.env, text=True, start_new_session=True)
        try:
            while poll.poll() is None:
                dead = [n for n in (self.head, self.worker) if n and n.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"ray start ({dead[0].name} node) exited with {dead[0].proc.returncode} "
                                       f"before the cluster was up:\n{self.logs_tail()}")
                time.sleep(0.1)
        finally:
            if poll.poll() is None:
                poll.kill()
            output = poll.communicate()[0]
        if poll.returncode != 0:
            raise RuntimeError(f"the Ray cluster at {self.address} did not have {nodes} alive nodes within "
                               f"{self.timeout_s:.0f} s (GCS poll: {output.strip()!r}):\n{self.logs_tail()}")

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's raylet, object store, agents and task workers: a machine dying.
        The GCS marks the node dead within ~2 s."""
        self.worker.kill()

    def logs_tail(self) -> str:
        return "\n".join(n.tail() for n in (self.head, self.worker) if n)

    def stop(self) -> None:
        for node in (self.worker, self.head):           # the worker first: it would log the head's loss
            if node:
                node.stop()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
