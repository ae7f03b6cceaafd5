"""The ssh transport against a real OpenSSH server on loopback (tests/devices/sshd.py).

The "board" is this machine, reached through /usr/sbin/sshd on 127.0.0.1 with generated
host and client keys; its Python is this virtual environment's, so the runtime imports.
Without openssh-server these tests fail, not skip: CI installs it.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sshd import LoopbackSshd, free_port, keygen, known_hosts_line

from edgepack.devices import Transport, load_device, run_on_device
from edgepack.devices import native_runner
from edgepack.devices.runner import cpu_info
from edgepack.errors import DeviceError

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(180)]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    try:
        server = LoopbackSshd(tmp_path_factory.mktemp("sshd")).start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server
    server.stop()


@pytest.fixture
def board(sshd, tmp_path):
    """board(**changes) -> a device file `board.toml` in tmp_path for the loopback server, loaded."""
    def make(**changes):
        changes.setdefault("remote_dir", tmp_path / "remote")
        return load_device(str(sshd.device_toml(tmp_path / "board.toml", **changes)))
    return make


def remote_leftovers(tmp_path) -> list[str]:
    """What the runs left in the board's remote_dir: open() made it, close() must empty it."""
    return sorted(p.name for p in (tmp_path / "remote").iterdir())


def runs_of(marker: str) -> list[str]:
    """Processes on this machine whose command line mentions `marker` (a run's remote folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmdline and int(proc.name) != os.getpid():
            found.append(cmdline)
    return found


@pytest.mark.parametrize("kind", ["tflite_float", "tflite_int8"])
def test_ssh_tflite_matches_local(board, models, tmp_path, kind):
    model, inputs = getattr(models, kind), models.inputs()
    kw = dict(warmup=2, runs=5, threads=1, workdir=tmp_path / "work")
    over_ssh = run_on_device(board(), model, inputs, **kw)
    local = run_on_device("host", model, inputs, **kw)
    np.testing.assert_allclose(over_ssh.outputs[0], local.outputs[0], rtol=1e-6, atol=1e-6)
    r = over_ssh.result
    assert (r["device"], r["transport"], r["emulated"]) == ("board", "ssh", False)
    assert r["arch"] == os.uname().machine and r["cpu"] == cpu_info()   # read on the board by the runner
    assert r["runtime"]["name"] == "ai_edge_litert" and len(r["samples_ms"]) == 5
    assert (tmp_path / "work" / "board" / "outputs.npz").is_file()
    assert remote_leftovers(tmp_path) == []                # the run's remote folder is gone


def test_hostile_file_names_are_never_interpreted(sshd, board, models, tmp_path):
    # Each payload would create the sentinel if a shell ever read the name unquoted ('\057' is '/').
    sentinel = Path(f"/tmp/edgepack-pwned-{uuid.uuid4().hex[:12]}")
    touch = f'touch "$(printf \'{str(sentinel).replace("/", chr(92) + "057")}\')"'
    name = f"m o;d $({touch}) `{touch}` 'q\" & {touch} #.tflite"
    folder = tmp_path / "in ; $(dir)"
    folder.mkdir()
    model = folder / name
    shutil.copyfile(models.tflite_float, model)
    inputs = folder / f"in puts;{touch};$({touch}).npz"     # runs the payload if ever unquoted
    shutil.copyfile(models.inputs(), inputs)
    keys = tmp_path / "keys with spaces & 100%"      # ssh_config values: quoted, % escaped
    keys.mkdir()
    known_hosts, key = keys / "known hosts", keys / "client key"
    shutil.copyfile(sshd.known_hosts, known_hosts)
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o600)

    run = run_on_device(board(known_hosts=known_hosts, identity_file=key), model, inputs, warmup=0, runs=2,
                        threads=1, workdir=tmp_path / "work")
    assert run.result["model"] == name                     # the board got the exact name
    reference = run_on_device("host", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1,
                              workdir=tmp_path / "work")
    np.testing.assert_array_equal(run.outputs[0], reference.outputs[0])
    assert not sentinel.exists()
    assert remote_leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "work" / "board").iterdir()) == ["outputs.npz", "result.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, inputs.name])


def test_check_passes_for_a_good_board(board):
    assert Transport.for_device(board()).check() is None


def _other_host_key(sshd, tmp_path):
    other = keygen(tmp_path / "other_host_key")
    path = tmp_path / "known_hosts_other"
    path.write_text(known_hosts_line(sshd.port, other.with_suffix(".pub")))
    return {"known_hosts": path}


def _empty_known_hosts(sshd, tmp_path):
    (tmp_path / "known_hosts_empty").write_text("")
    return {"known_hosts": tmp_path / "known_hosts_empty"}


BAD_BOARDS = {
    "changed host key": (_other_host_key,
                         r"host key for 127\.0\.0\.1:{port} does not match known_hosts .*known_hosts_other"),
    "unknown host key": (_empty_known_hosts, r"host key for 127\.0\.0\.1:{port} is not in known_hosts .*_empty"),
    "closed port": (lambda sshd, tmp: {"port": free_port()},
                    r"ssh to {user}@127\.0\.0\.1:\d+ failed: connection refused"),
    "key not authorized": (lambda sshd, tmp: {"identity_file": keygen(tmp / "stranger")},
                           r"ssh to {user}@127\.0\.0\.1:{port} failed: authentication refused for identity_file "
                           r".*stranger \(.*Permission denied \(publickey\)\.\)"),
    "no identity file": (lambda sshd, tmp: {"identity_file": tmp / "nope"}, r"identity_file .*nope does not exist"),
    "no known_hosts file": (lambda sshd, tmp: {"known_hosts": tmp / "nope"}, r"known_hosts .*nope does not exist"),
    "no python there": (lambda sshd, tmp: {"python": "/opt/no-such/python3"},
                        r"python /opt/no-such/python3 not found on {user}@127\.0\.0\.1:{port} "
                        r"\(`python` in .*board\.toml\)"),
}


@pytest.mark.parametrize("case", list(BAD_BOARDS))
def test_bad_board_fails_fast_with_the_reason(sshd, board, models, tmp_path, case):
    changes, pattern = BAD_BOARDS[case]
    device = board(**changes(sshd, tmp_path))
    pattern = pattern.format(port=device.port, user=sshd.user)
    started = time.monotonic()
    reason = Transport.for_device(device).check()
    assert reason and re.match(pattern, reason), reason
    with pytest.raises(DeviceError, match=r"^device 'board' is not ready: " + pattern):
        run_on_device(device, models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1,
                      workdir=tmp_path / "work")
    assert time.monotonic() - started < 10                # refused, not waited out
    assert not (tmp_path / "remote").exists()


def test_silent_port_times_out_after_connect_timeout(sshd, board, tmp_path):
    with socket.socket() as listener:               # accepts the TCP connection, never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        device = board(port=listener.getsockname()[1], connect_timeout_s=1)
        started = time.monotonic()
        reason = Transport.for_device(device).check()
    assert re.match(rf"ssh to {sshd.user}@127\.0\.0\.1:\d+ failed: connection timed out \(connect_timeout_s = 1\)",
                    reason), reason
    assert time.monotonic() - started < 10


def test_missing_runtime_is_the_runners_import_error(board, models, tmp_path):
    assert importlib.util.find_spec("tflite_runtime") is None   # the board has only ai_edge_litert
    with pytest.raises(DeviceError) as info:
        run_on_device(board(runtimes=("tflite_runtime",)), models.tflite_float, models.inputs(), warmup=0,
                      runs=1, threads=1, workdir=tmp_path / "work")
    first = str(info.value).splitlines()[0]
    assert first.startswith("device 'board': the runner exited with status 3 on float.tflite: runner: no runtime "
                            "for .tflite imports here (tflite_runtime: ModuleNotFoundError"), first
    assert remote_leftovers(tmp_path) == []


def test_runner_timeout_ends_the_remote_run(board, models, tmp_path):
    started = time.monotonic()
    with pytest.raises(DeviceError, match=r"^device 'board': python\S* runner\.py timed out after 2 s \(ssh "):
        run_on_device(board(), models.tflite_float, models.inputs(), warmup=0, runs=10**9, threads=1,
                      workdir=tmp_path / "work", timeout_s=2)
    assert time.monotonic() - started < 20
    assert remote_leftovers(tmp_path) == []
    assert runs_of(str(tmp_path / "remote")) == []         # the board's `timeout` ended the runner


def test_run_reports_status_environment_and_signals(board, tmp_path):
    transport = Transport.for_device(board())
    remote = transport.open(tmp_path / "work")
    try:
        assert Path(remote).parent == tmp_path / "remote" and Path(remote).is_dir()
        assert Path(transport._socket).exists()             # one shared connection for the run
        done = transport.run(["sh", "-c", 'printf %s "$EP_X"; echo oops >&2; exit 3'], cwd=remote,
                             env={"EP_X": "a b;$(c)'"}, timeout_s=30)
        assert (done.returncode, done.stdout, done.stderr) == (3, "a b;$(c)'", "oops\n")
        assert transport.run(["pwd"], cwd=remote, env=None, timeout_s=30).stdout.strip() == remote
        killed = transport.run(["sh", "-c", "kill -KILL $$"], cwd=remote, env=None, timeout_s=30)
        assert killed.returncode == -9                       # "was killed by SIGKILL", as a local run says
        with pytest.raises(DeviceError, match=r"cannot run /opt/no-such/python3 on .*: .*/opt/no-such/python3"):
            transport.run(["/opt/no-such/python3", "runner.py"], cwd=remote, env=None, timeout_s=30)
        with pytest.raises(OSError, match=r"nope\.json on .*No such file"):
            transport.get(transport.join(remote, "nope.json"), tmp_path / "nope.json")
        assert not list(tmp_path.glob("*nope*"))             # no partial file left behind
    finally:
        socket_dir = transport._mux_dir
        transport.close(remote)
    assert not Path(remote).exists() and not Path(socket_dir).exists()
    assert transport._mux_dir is None


def test_cpp_runner_is_put_on_the_board_once_and_runs_pte(board, models, tmp_path):
    device = board(runtimes=("executorch_cpp",))          # no Python runtime: the board needs no python
    transport = Transport.for_device(device)
    assert re.match(r"the executorch_cpp runner is not in .*remote on .*: run `edgepack device setup board`",
                    transport.check())
    said = []
    transport.setup(said.append)
    assert any(f"copying the {os.uname().machine} runner" in line for line in said), said
    folder = tmp_path / "remote" / transport.native_folder
    assert sorted(p.name for p in folder.iterdir()) == sorted([native_runner.EXECUTABLE, *native_runner.LIBRARIES])
    stamp = (folder / native_runner.EXECUTABLE).stat().st_mtime_ns
    said.clear()
    transport.setup(said.append)                           # already there: nothing copied again
    assert not any("copying" in line for line in said)
    assert (folder / native_runner.EXECUTABLE).stat().st_mtime_ns == stamp
    assert transport.check() is None

    run = run_on_device(device, models.pte_int8, models.inputs("nchw"), warmup=1, runs=3, threads=1, profile=3,
                        workdir=tmp_path / "work")
    r = run.result
    assert (r["transport"], r["emulated"], r["runtime"]["name"]) == ("ssh", False, "executorch_cpp")
    assert r["cpu"] == cpu_info() and r["profile"]["ops"]
    np.testing.assert_allclose(run.outputs[0], models.executorch_outputs(models.pte_int8, models.inputs("nchw")),
                               rtol=1e-6, atol=1e-6)
    assert remote_leftovers(tmp_path) == [transport.native_folder]      # the run's folder is gone, the runner stays
