"""A real OpenSSH server on loopback for the ssh transport's tests.

`LoopbackSshd(root).start()` generates a host key and a client key pair under `root`,
writes an sshd_config that accepts only that client key, and runs
`/usr/sbin/sshd -D -e -f CONFIG` on 127.0.0.1 on a free unprivileged port. The "board"
is this machine, logged into as the current user. `device_toml(...)` writes a device
file that reaches it. Every program started here has a time limit.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"                  # sshd refuses to start unless run by its absolute path
INSTALL_HINT = "install openssh-server and openssh-client (scripts/install-system-deps.sh; CI runs it)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair: `path` (private) and `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)
    return path


def known_hosts_line(port: int, public_key: Path) -> str:
    """known_hosts syntax for a non-default port: [host]:port, then the key's type and base64."""
    kind, blob = public_key.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {blob}\n"


class LoopbackSshd:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.client_key = self.root / "client_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self.log = self.root / "sshd.log"

    def start(self, attempts: int = 3) -> "LoopbackSshd":
        missing = [tool for tool in ("ssh", "ssh-keygen") if not shutil.which(tool)]
        if not os.access(SSHD, os.X_OK) or missing:
            raise RuntimeError(f"the ssh tests need a real sshd and ssh client ({SSHD}, ssh, ssh-keygen; "
                               f"missing: {', '.join(missing) or SSHD}): {INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key)
        keygen(self.client_key)
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)   # privilege separation dir
        for _ in range(attempts):                  # another program may take the free port first
            self.port = free_port()
            self.known_hosts.write_text(known_hosts_line(self.port, self.host_key.with_suffix(".pub")))
            if self._launch():
                return self
        raise RuntimeError(f"sshd did not start on 127.0.0.1 ({attempts} tries); its log:\n{self.log.read_text()}")

    def _launch(self) -> bool:
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.client_key.with_suffix('.pub')}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",                        # keys live in world-readable tmp folders
            "PrintMotd no",
            "X11Forwarding no",
            "LogLevel VERBOSE",
            "",                                      # no sftp Subsystem: the transport needs none
        ]))
        log = self.log.open("ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def device_toml(self, path: Path, *, port: int | None = None, known_hosts: Path | None = None,
                    identity_file: Path | None = None, python: str | None = None,
                    runtimes: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime"),
                    remote_dir: Path | str | None = None, connect_timeout_s: float = 5) -> Path:
        """A device file (name = the file's stem) that reaches this server, or a variant of it."""
        fields = {
            "transport": "ssh", "arch": os.uname().machine, "threads": 1,
            "runtimes": list(runtimes),
            "python": python or sys.executable,      # the board's Python: this venv's, so the runtime imports
            "host": "127.0.0.1", "port": port or self.port, "user": self.user,
            "identity_file": str(identity_file or self.client_key),
            "known_hosts": str(known_hosts or self.known_hosts),
            "remote_dir": str(remote_dir or self.root / "remote"),
            "connect_timeout_s": connect_timeout_s,
        }
        lines = [f"{key} = {_toml(value)}" for key, value in fields.items()]
        path.write_text("\n".join(lines) + "\n")
        return path


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
