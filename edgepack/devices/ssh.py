"""A Linux board (Raspberry Pi, Jetson, an ARM server) reached with the system ssh client.

One run, as the harness drives it:

    check()  `ssh ... sh -c 'command -v PYTHON'`: reachable, host key and login good, Python there
    open()   starts one multiplexed connection (ControlMaster, ControlPersist) that every
             later step reuses, then `mktemp -d REMOTE_DIR/run.XXXXXXXXXX`
    put()    `ssh ... sh -c 'cat > DIR/NAME'` with the local file as stdin
    run()    `ssh ... sh -c 'cd DIR; timeout T PYTHON runner.py ...'` (the board's `timeout`, if it has one)
    get()    `ssh ... sh -c 'cat -- FILE'` into a local file, renamed into place when whole
    close()  `rm -rf -- DIR`, then `ssh -O exit` ends the shared connection

Files travel over ssh itself rather than scp: OpenSSH 9's scp speaks SFTP, which the
board's sshd must offer (dropbear and trimmed images often do not), while its legacy
mode hands the remote path to a remote shell unquoted. One program, one set of options
and one place that reads its errors. Every remote command is a `sh -c` script whose
every word is shlex-quoted (the board's login shell may not be sh); local file names
are never interpolated raw.

Host keys are checked against the device's known_hosts only and never accepted
automatically; BatchMode turns any prompt into a failure. `identity_file` and
`known_hosts` may start with ~ (this machine's home) or be relative to the device file.
`remote_dir` may start with ~/ (the board's home). Without `python`, the board's python3.
The base class's facts() fit as they are: arch and cpu are what the runner read on the
board (its /proc/cpuinfo), and a board is not emulated.

For .pte files on a board without torch, runtime executorch_cpp: `edgepack device setup`
builds the C++ runner for the board's architecture (`uname -m` there) and copies it with
its libraries to REMOTE_DIR/edgepack-executorch-runner-<tag>/ (the tag changes with the
runner's sources and the executorch version), then runs its --version there, which fails
with the loader's own words when the board's glibc or libstdc++ is too old. Each run
starts it as ../<that folder>/edgepack-executorch-runner from its run folder, a sibling.
"""
from __future__ import annotations

import hashlib
import math
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from ..errors import DeviceError
from . import native_runner
from .config import SshDevice
from .transport import Completed, RunnerCommand, Transport, is_native, tail

SSH = "ssh"
PERSIST_S = 30          # the shared connection outlives its last use by this much if close() never comes
QUICK_S = 30            # beyond the connection time: small commands (mkdir, rm, command -v)
COPY_RATE_BYTES_S = 1e6  # the slowest link a copy's time limit allows for (Wi-Fi to a Pi is faster)
SIGNAL_EXIT = range(129, 129 + 64)  # sh's status for a child killed by signal N is 128 + N


class SshFailed(DeviceError):
    """A step failed; `reason` is the message without the device's name (check() returns it)."""

    def __init__(self, device: str, reason: str):
        super().__init__(f"device {device!r}: {reason}")
        self.reason = reason


class SshTimedOut(SshFailed):
    pass


class SshTransport(Transport):
    kind = "ssh"
    device: SshDevice

    def __init__(self, device: SshDevice):
        super().__init__(device)
        self._mux_dir: str | None = None     # local folder of the shared connection's socket, while open
        self._opened: set[str] = set()       # remote folders made by open(): the only ones close() removes

    # -- who and where ----------------------------------------------------------------

    @property
    def python(self) -> str:
        return self.device.python or "python3"

    @property
    def target(self) -> str:
        """user@host:port, for messages."""
        d = self.device
        return f"{d.user + '@' if d.user else ''}{d.host}:{d.port}"

    def _local_path(self, value: str | None) -> Path | None:
        if not value:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.device.source is not None:
            path = self.device.source.parent / path
        return path

    @property
    def known_hosts(self) -> Path | None:
        return self._local_path(self.device.known_hosts)

    @property
    def identity_file(self) -> Path | None:
        return self._local_path(self.device.identity_file)

    # -- the ssh command line ---------------------------------------------------------------

    def _options(self, master: bool = False) -> list[str]:
        d = self.device
        opts = {
            "BatchMode": "yes",                    # no password or passphrase prompt can hang a run
            "StrictHostKeyChecking": "yes",        # an unknown or changed host key fails, never added
            "UpdateHostKeys": "no",                # and known_hosts is never written to
            "ConnectTimeout": str(max(1, math.ceil(d.connect_timeout_s))),   # ssh takes whole seconds
            "ServerAliveInterval": "10",           # a board that drops off mid-run fails in ~30 s
            "ServerAliveCountMax": "3",
            "LogLevel": "ERROR",                   # keep warnings out of the runner's stderr, errors in
            "RequestTTY": "no",                    # binary stdin/stdout; stderr kept apart
            "ClearAllForwardings": "yes",          # forwards in ~/.ssh/config would clash between calls
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "RemoteCommand": "none",
        }
        if self.known_hosts:
            opts["UserKnownHostsFile"] = _config_path(self.known_hosts)
            opts["GlobalKnownHostsFile"] = "/dev/null"   # the device file's known_hosts alone decides
        if self.identity_file:
            opts["IdentityFile"] = _config_path(self.identity_file)
            opts["IdentitiesOnly"] = "yes"         # not every key in the agent (MaxAuthTries)
        # Through the run's shared connection when open() made one; never ~/.ssh/config's.
        opts["ControlMaster"], opts["ControlPath"] = "no", (self._socket if self._mux_dir else "none")
        if master:
            opts["ControlMaster"], opts["ControlPersist"] = "yes", f"{PERSIST_S}s"
        argv = [SSH, "-p", str(d.port)]
        if d.user:
            argv += ["-l", d.user]
        for key, value in opts.items():
            argv += ["-o", f"{key}={value}"]
        return argv

    def _argv(self, script: str) -> list[str]:
        """ssh running `script` under sh on the board, whatever the login shell is."""
        return [*self._options(), "--", self.device.host, "sh -c " + shlex.quote(script)]

    @property
    def _socket(self) -> str:
        return os.path.join(self._mux_dir, "mux")

    def _call(self, argv: list[str], *, timeout_s: float, what: str, stdin: IO[bytes] | None = None,
              stdout: IO[bytes] | None = None) -> Completed:
        """Run ssh here, streaming binary stdin/stdout when given; on timeout kill it and raise."""
        try:
            proc = subprocess.Popen(argv, stdin=stdin or subprocess.DEVNULL, stdout=stdout or subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise SshFailed(self.device.name, f"cannot start {argv[0]}: {e.strerror or e} "
                                              "(apt-get install openssh-client)") from None
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise SshTimedOut(self.device.name, f"{what} timed out after {timeout_s:g} s (ssh {self.target})") from None
        except BaseException:           # Ctrl-C: leave nothing running behind us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return Completed(proc.returncode, _text(out), _text(err))

    def _ssh(self, script: str, *, timeout_s: float, what: str, **streams) -> Completed:
        return self._call(self._argv(script), timeout_s=timeout_s, what=what, **streams)

    # -- what went wrong --------------------------------------------------------------------

    def _failure(self, done: Completed) -> str | None:
        """ssh's own error (it exits 255) as one line, or None when the remote command failed."""
        if done.returncode != 255:
            return None
        err, host = done.stderr, f"{self.device.host}:{self.device.port}"
        known = self.known_hosts or "~/.ssh/known_hosts"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "has changed and you have requested" in err:
            return (f"host key for {host} does not match known_hosts {known} (if the board was reinstalled, "
                    f"check its new key's fingerprint before replacing that line)")
        if "host key is known for" in err:
            return (f"host key for {host} is not in known_hosts {known}: add it once you have checked its "
                    f"fingerprint (ssh-keyscan -p {self.device.port} {self.device.host})")
        if "Host key verification failed" in err:
            return f"host key for {host} could not be verified against known_hosts {known}"
        if "Permission denied" in err:
            key = f"identity_file {self.identity_file}" if self.identity_file else "the default keys"
            return f"ssh to {self.target} failed: authentication refused for {key} ({_last_line(err)})"
        reasons = {
            "Connection refused": "connection refused",
            "timed out": f"connection timed out (connect_timeout_s = {self.device.connect_timeout_s:g})",
            "Could not resolve hostname": "cannot resolve the host name",
            "No route to host": "no route to host",
            "Network is unreachable": "network is unreachable",
            "Connection reset": "connection reset by the board",
            "Connection closed": "connection closed by the board",
            "closed by remote host": "connection closed by the board",
            "hostname contains invalid characters": "the host name is not valid",
        }
        for needle, reason in reasons.items():
            if needle in err:
                return f"ssh to {self.target} failed: {reason}"
        last = _last_line(err)
        return f"ssh to {self.target} failed" + (f": {last}" if last else " (exit 255, nothing said)")

    def _raise_for(self, done: Completed, what: str) -> None:
        """DeviceError for a failed step: ssh's reason, else the remote command's stderr."""
        if done.returncode == 0:
            return
        reason = self._failure(done)
        if reason is None:
            last = _last_line(done.stderr) or f"exit status {done.returncode}"
            reason = f"{what} failed on {self.target}: {last}"
        raise SshFailed(self.device.name, reason)

    # -- readiness --------------------------------------------------------------------------

    def check(self) -> str | None:
        if not shutil.which(SSH):
            return f"{SSH} not found: apt-get install openssh-client"
        for key, path in (("identity_file", self.identity_file), ("known_hosts", self.known_hosts)):
            if path and not path.is_file():
                return f"{key} {path} does not exist"
            if path and '"' in str(path):
                return f"{key} {path}: ssh cannot take a path with a double quote in it"
        script = "true"
        if any(not is_native(r) for r in self.device.runtimes):
            script = f"command -v {shlex.quote(self.python)} >/dev/null 2>&1 || exit 127"
        if native_runner.RUNTIME in self.device.runtimes:
            runner = f"{_remote_path(self.device.remote_dir)}/{self.native_folder}/{native_runner.EXECUTABLE}"
            script += f"; test -x {runner} || exit 3"
        try:
            done = self._ssh(script, timeout_s=self.device.connect_timeout_s + QUICK_S, what="connecting")
        except SshFailed as e:
            return e.reason
        if done.returncode == 127:
            return f"python {self.python} not found on {self.target} (`python` in {self._file})"
        if done.returncode == 3:
            return (f"the {native_runner.RUNTIME} runner is not in {self.device.remote_dir} on {self.target} (or is "
                    f"another build): run `edgepack device setup {self.device.name}`")
        if done.returncode != 0:
            return self._failure(done) or f"ssh to {self.target}: exit status {done.returncode}"
        return None

    @property
    def _file(self) -> str:
        return str(self.device.source or f"devices/{self.device.name}.toml")

    # -- the runner ------------------------------------------------------------------------

    def runner_command(self, model: Path) -> RunnerCommand:
        native, runtimes = self.pick_runner(model)
        if native is None:
            return RunnerCommand(argv=[self.python], runtimes=runtimes)
        # Each run's folder is REMOTE_DIR/run.XXXXXXXXXX, a sibling of the runner's.
        return RunnerCommand(argv=[f"../{self.native_folder}/{native_runner.EXECUTABLE}"], runtimes=[native],
                             script=None)

    @property
    def native_folder(self) -> str:
        """The C++ runner's folder on the board: a new name for other sources or executorch."""
        tag = f"{native_runner.executorch_version()} {native_runner.source_hash()}"
        return f"{native_runner.EXECUTABLE}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"

    def setup(self, progress=None) -> None:
        """Put the C++ runner and its libraries on the board, once (for executorch_cpp)."""
        if native_runner.RUNTIME not in self.device.runtimes:
            return
        say = progress or (lambda message: None)
        quick = self.device.connect_timeout_s + QUICK_S
        self._connect()
        try:
            done = self._ssh("uname -m", timeout_s=quick, what="uname -m")
            self._raise_for(done, "uname -m")
            arch = done.stdout.strip()
            local = native_runner.ensure_runner(arch, native_runner.cache_dir(arch), say)
            base = _remote_path(self.device.remote_dir)
            done = self._ssh(f"mkdir -p -- {base} && cd -- {base} && pwd -P", timeout_s=quick, what="mkdir -p")
            self._raise_for(done, f"making {self.device.remote_dir}")
            home = done.stdout.strip().splitlines()[-1]
            folder = posixpath.join(home, self.native_folder)
            runner = shlex.quote(posixpath.join(folder, native_runner.EXECUTABLE))
            if self._ssh(f"{runner} --version", timeout_s=quick, what="--version").returncode != 0:
                say(f"{native_runner.RUNTIME}: copying the {arch} runner and its libraries to {self.target}:{folder}")
                part = folder + ".part"
                done = self._ssh(f"rm -rf -- {shlex.quote(part)} && mkdir -p -- {shlex.quote(part)}",
                                 timeout_s=quick, what="mkdir")
                self._raise_for(done, f"making {part}")
                for name in (native_runner.EXECUTABLE, *native_runner.LIBRARIES):
                    self.put(local / name, part)
                # Older builds go; this one is renamed into place whole.
                old = shlex.quote(posixpath.join(home, native_runner.EXECUTABLE)) + "-*"
                done = self._ssh(f"chmod 755 {shlex.quote(posixpath.join(part, native_runner.EXECUTABLE))} && "
                                 f"for d in {old}; do [ \"$d\" = {shlex.quote(part)} ] || rm -rf -- \"$d\"; done && "
                                 f"mv -- {shlex.quote(part)} {shlex.quote(folder)}", timeout_s=quick, what="mv")
                self._raise_for(done, f"installing the runner in {folder}")
            done = self._ssh(f"{runner} --version", timeout_s=quick, what="--version")
            if done.returncode != 0:
                raise SshFailed(self.device.name, f"the {native_runner.RUNTIME} runner does not start on "
                                                  f"{self.target}: {_last_line(done.stderr) or done.returncode} (it "
                                                  "needs glibc >= 2.34 and the libstdc++ of GCC >= 11: Debian 12, "
                                                  "Ubuntu 22.04, Raspberry Pi OS bookworm or newer)")
            say(f"{native_runner.RUNTIME}: ready on {self.target}: {done.stdout.strip()}")
        finally:
            self._disconnect()

    # -- files and processes ------------------------------------------------------------------

    def open(self, workdir: Path) -> str:
        self._connect()
        try:
            base = _remote_path(self.device.remote_dir)
            done = self._ssh(f"mkdir -p -- {base} && mktemp -d {base}/run.XXXXXXXXXX",
                             timeout_s=self.device.connect_timeout_s + QUICK_S, what="mktemp -d")
            self._raise_for(done, f"making a folder under {self.device.remote_dir}")
            lines = done.stdout.strip().splitlines()
            remote = lines[-1] if lines else ""
            if not remote.startswith("/"):
                raise SshFailed(self.device.name, f"mktemp -d under {self.device.remote_dir} on {self.target} "
                                                  f"printed {done.stdout.strip()!r}, not a folder")
        except BaseException:
            self._disconnect()
            raise
        self._opened.add(remote)
        return remote

    def put(self, local: Path, remote_dir: str) -> str:
        local = Path(local)
        remote = self.join(remote_dir, local.name)
        limit = self.device.connect_timeout_s + QUICK_S + local.stat().st_size / COPY_RATE_BYTES_S
        with local.open("rb") as f:
            done = self._ssh(f"cat > {shlex.quote(remote)}", stdin=f, timeout_s=limit,
                             what=f"copying {local.name}")
        self._raise_for(done, f"copying {local.name} to {remote}")
        return remote

    def run(self, argv: list[str], *, cwd: str, env: dict[str, str] | None, timeout_s: float) -> Completed:
        command = " ".join(shlex.quote(a) for a in argv)
        if env:
            command = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + command
        # The board's own `timeout` ends the runner there: killing the local ssh would not.
        script = (f"cd {shlex.quote(cwd)} || exit 125\n"
                  f"limit=; if command -v timeout >/dev/null 2>&1; then limit='timeout {math.ceil(timeout_s)}'; fi\n"
                  f"$limit {command}\n"
                  "exit $?")              # not the last command: sh must not exec it, so a signal shows as 128+N
        what = " ".join(Path(a).name for a in argv[:2])
        timed_out = SshTimedOut(self.device.name, f"{what} timed out after {timeout_s:g} s (ssh {self.target})")
        try:   # the local limit is a backstop for boards without `timeout`
            done = self._ssh(script, timeout_s=timeout_s + self.device.connect_timeout_s + QUICK_S, what=what)
        except SshTimedOut:
            raise timed_out from None
        if done.returncode == 124:
            raise timed_out
        if done.returncode in (126, 127):
            said = _last_line(done.stderr)
            hint = f" (`python` in {self._file})" if argv[0] == self.python else ""
            if argv[0].endswith(native_runner.EXECUTABLE):
                hint = f" (run `edgepack device setup {self.device.name}`)"
            raise SshFailed(self.device.name, f"cannot run {argv[0]} on {self.target}"
                                              + (f": {said}" if said else "") + hint)
        if done.returncode == 255:
            self._raise_for(done, what)
        if done.returncode in SIGNAL_EXIT:          # as a local run says it: killed by SIGKILL (OOM), ...
            done.returncode = 128 - done.returncode
        return done

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        part = local.with_name(f".{local.name}.part")
        try:
            with part.open("wb") as f:
                done = self._ssh(f"cat -- {shlex.quote(remote)}", stdout=f,
                                 timeout_s=self.device.connect_timeout_s + 10 * QUICK_S, what=f"fetching {remote}")
            if done.returncode == 255:
                self._raise_for(done, f"fetching {remote}")
            if done.returncode != 0:
                raise OSError(f"{remote} on {self.target}: {_last_line(done.stderr) or done.returncode}")
            os.replace(part, local)
        finally:
            part.unlink(missing_ok=True)

    def close(self, remote_dir: str) -> None:
        """Remove the run's folder, then the shared connection once no folder is open; never raises
        (it runs in a finally, and the run's own error is the one to see)."""
        try:
            if remote_dir in self._opened:
                self._opened.discard(remote_dir)
                self._ssh(f"rm -rf -- {shlex.quote(remote_dir)}", what="rm -rf",
                          timeout_s=self.device.connect_timeout_s + QUICK_S)
        except SshFailed:
            pass                # the board went away; its remote_dir is its own to clean
        finally:
            if not self._opened:
                self._disconnect()

    # -- the shared connection -----------------------------------------------------------------

    def _connect(self) -> None:
        """One authenticated connection that later calls reuse: one handshake per run, not one per file."""
        if self._mux_dir:
            return
        base = tempfile.gettempdir()
        if len(base) > 60 or "%" in base:    # a socket path is at most ~100 bytes; ssh expands % in it
            base = "/tmp"
        self._mux_dir = tempfile.mkdtemp(prefix="edgepack-ssh-", dir=base)
        argv = [*self._options(master=True), "-N", "--", self.device.host]
        try:
            done = self._call(argv, timeout_s=self.device.connect_timeout_s + QUICK_S, what="connecting")
            self._raise_for(done, "connecting")
            if not os.path.exists(self._socket):
                raise SshFailed(self.device.name, f"ssh to {self.target} made no control socket")
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if not self._mux_dir:
            return
        try:
            if os.path.exists(self._socket):
                self._call([*self._options(), "-O", "exit", "--", self.device.host], timeout_s=QUICK_S,
                           what="ssh -O exit")
        except SshFailed:
            pass                # the master ends by itself PERSIST_S after its last use
        finally:
            shutil.rmtree(self._mux_dir, ignore_errors=True)
            self._mux_dir = None


def _remote_path(path: str) -> str:
    """A remote path as a shell word: quoted, with a leading ~/ left to the board's $HOME."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _config_path(path: Path) -> str:
    """A local path as one ssh_config value: quoted (a space would split it), % tokens escaped."""
    return '"' + str(path).replace("%", "%%") + '"'     # check() refuses a path with a double quote


def _last_line(text: str) -> str:
    return tail(text, 1)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
