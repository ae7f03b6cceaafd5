"""The C++ ExecuTorch runner (runtime executorch_cpp): built from the executorch wheels for
x86-64 (this host) and aarch64 (the emulator), run on a float, an int8 and an int64-input
.pte, and compared with the Python ExecuTorch runtime on the host.

Each build happens once and is cached on disk: the host's in ~/.cache/edgepack/executorch-runner
($EDGEPACK_RUNNER_CACHE), the aarch64 one in the emulator root (the `qemu_root` fixture).
"""
from __future__ import annotations

import json
import re
import subprocess
import zipfile

import numpy as np
import pytest

from edgepack.devices import Transport, load_device, native_runner, run_on_device
from edgepack.devices.runner import SCHEMA, cpu_info
from edgepack.errors import DeviceError

KW = {"warmup": 1, "runs": 3, "threads": 1, "profile": 3}


@pytest.fixture(scope="session")
def host_cpp(tmp_path_factory):
    """A local device whose only runtime is the C++ runner, set up (built once, cached)."""
    path = tmp_path_factory.mktemp("host-cpp") / "host-cpp.toml"
    path.write_text('transport = "local"\nruntimes = ["executorch_cpp"]\n')
    device = load_device(str(path))
    Transport.for_device(device).setup()
    return device


@pytest.fixture(scope="session")
def runner(host_cpp):
    """argv prefix that starts the host's C++ runner directly."""
    return [str(Transport.for_device(host_cpp).native_dir / native_runner.EXECUTABLE)]


# runner.py's result keys (its `python` and `numpy` aside): the contract the harness reads.
RESULT_KEYS = {"schema", "runtime", "model", "arch", "cpu", "threads", "warmup", "runs", "init_ms", "latency_ms",
               "samples_ms", "peak_rss_mb", "n_inputs", "outputs", "io"}


def check_result(r, n_inputs):
    """The same contract as runner.py's result, plus the ETDump profile; returns the ops by name."""
    assert RESULT_KEYS <= set(r) and r["schema"] == SCHEMA and r["runtime"]["name"] == "executorch_cpp"
    assert r["runtime"]["version"] == native_runner.executorch_version()
    assert r["runtime"]["runner_source"] == native_runner.source_hash()
    assert (r["threads"], r["warmup"], r["runs"], r["n_inputs"]) == (1, 1, 3, n_inputs)
    assert len(r["samples_ms"]) == 3 and r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["max"]
    assert r["init_ms"] > 0 and r["peak_rss_mb"] > 1
    prof = r["profile"]
    assert prof["source"] == "etdump" and prof["runs"] == 3 and prof["ops"], prof
    ms = [op["ms"] for op in prof["ops"]]
    assert ms == sorted(ms, reverse=True)
    assert all(op["calls"] >= 1 and op["type"] in ("kernel", "xnnpack", "delegate", "operator") for op in prof["ops"])
    assert sum(ms) <= prof["method_ms"] * 1.05 + 0.005   # innermost events only: nothing counted twice
    return {op["name"]: op for op in prof["ops"]}


# -------------------------------------------------------------------------- the host (x86-64)


@pytest.mark.parametrize("kind", ["pte", "pte_int8"])
def test_host_cpp_matches_the_python_runtime(host_cpp, models, tmp_path, kind):
    model, inputs = getattr(models, kind), models.inputs("nchw")
    cpp = run_on_device(host_cpp, model, inputs, workdir=tmp_path, output_names=["logits"], **KW)
    ops = check_result(cpp.result, 6)
    assert cpp.result["arch"] == "x86_64" and cpp.result["cpu"] == cpu_info() and cpp.result["emulated"] is False
    assert cpp.result["outputs"] == ["logits"] and cpp.outputs[0].shape == (6, 10)
    expected = models.executorch_outputs(model, inputs)
    np.testing.assert_allclose(cpp.outputs[0], expected, rtol=1e-6, atol=1e-6)    # the same x86 kernels
    assert any(op["type"] == "xnnpack" and "Convolution" in name for name, op in ops.items()), ops
    assert "mean.out" in ops or any("Mean" in name for name in ops), ops


def test_host_cpp_int64_ids_and_portable_kernels(host_cpp, models, tmp_path):
    cpp = run_on_device(host_cpp, models.pte_ids, models.ids(), workdir=tmp_path, **KW)
    ops = check_result(cpp.result, 6)
    assert cpp.result["io"]["inputs"][0]["dtype"] == "int64"            # ids stay int64
    expected = models.executorch_outputs(models.pte_ids, models.ids())
    np.testing.assert_allclose(cpp.outputs[0], expected, rtol=1e-6, atol=1e-6)
    assert ops["embedding.out"]["type"] == "kernel"                      # not delegated: a CPU kernel ran it


def test_fortran_ordered_and_cast_inputs_give_the_same_answer(runner, models, tmp_path):
    x = np.load(models.inputs("nchw"))["x"]
    expected = run(runner, models.pte, x, tmp_path / "c")
    assert np.array_equal(run(runner, models.pte, np.asfortranarray(x), tmp_path / "f"), expected)
    got = run(runner, models.pte, x.astype(np.float64), tmp_path / "d")   # float64 given, float32 taken
    assert np.array_equal(got, expected)


def run(runner, model, x, out, **arrays):
    out.mkdir()
    np.savez(out / "x.npz", x=x, **arrays)
    done = subprocess.run(runner + ["--model", str(model), "--inputs", str(out / "x.npz"), "--runs", "1",
                                    "--warmup", "0", "--out-json", str(out / "r.json"),
                                    "--out-outputs", str(out / "y.npz")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with np.load(out / "y.npz") as z:
        return z["output_0"]


def _compressed(tmp, models):
    np.savez_compressed(tmp / "in.npz", x=np.load(models.inputs("nchw"))["x"])
    return models.pte, r"in\.npz \[x\.npy\]: compressed \(np\.savez_compressed\); write the inputs with np\.savez"


def _floats_for_ids(tmp, models):
    np.savez(tmp / "in.npz", ids=np.zeros((2, 5), np.float32))
    return models.pte_ids, "input_0: the model takes int64, the inputs file gives float32"


def _two_inputs(tmp, models):
    np.savez(tmp / "in.npz", a=np.zeros((2, 3, 8, 8), np.float32), b=np.zeros((2, 3, 8, 8), np.float32))
    return models.pte, r"the model takes 1 inputs \(input_0\); the inputs file holds 2 \(a, b\)"


def _ragged(tmp, models):
    np.savez(tmp / "in.npz", a=np.zeros((2, 5), np.int64), b=np.zeros((3, 5), np.int64))
    return models.pte_ids, r"the inputs need the same number \(> 0\) of samples, got a \(2, 5\), b \(3, 5\)"


def _not_a_program(tmp, models):
    (tmp / "m.pte").write_bytes(b"not a program" * 10)
    np.savez(tmp / "in.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    return tmp / "m.pte", r"loading m\.pte: "


def _wrong_shape(tmp, models):
    np.savez(tmp / "in.npz", x=np.zeros((2, 3, 9, 9), np.float32))
    return models.pte, (r"executing forward failed: .* \(sample 0: input_0 float32 \(1, 3, 9, 9\); the model "
                        r"takes input_0 float32 \(1, 3, 8, 8\)\)")


def _no_model(tmp, models):
    np.savez(tmp / "in.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    return tmp / "nope.pte", r"nope\.pte: cannot open the model file"


BAD = {"wrong shape": _wrong_shape, "no model file": _no_model, "compressed npz": _compressed,
       "floats for int64 ids": _floats_for_ids, "input count": _two_inputs, "ragged samples": _ragged,
       "not a program": _not_a_program}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_named_exit_3(runner, models, tmp_path, case):
    model, message = BAD[case](tmp_path, models)
    done = subprocess.run(runner + ["--model", str(model), "--inputs", str(tmp_path / "in.npz"), "--out-json",
                                    str(tmp_path / "r.json"), "--out-outputs", str(tmp_path / "y.npz")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("runner: ") and re.search(message, last), last
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "y.npz").exists()


def test_bad_flags_exit_2_and_version_says_what_it_is(runner):
    done = subprocess.run(runner + ["--model", "m.pte", "--runs", "0"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "the following argument is required: --inputs" in done.stderr
    done = subprocess.run(runner + ["--version"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"runtime": "executorch_cpp", "version": native_runner.executorch_version(),
                                       "runner_source": native_runner.source_hash(), "arch": "x86_64"}


def test_outputs_npz_is_what_numpy_writes(runner, models, tmp_path):
    run(runner, models.pte, np.load(models.inputs("nchw"))["x"], tmp_path / "o")
    with zipfile.ZipFile(tmp_path / "o" / "y.npz") as z:
        assert z.testzip() is None and z.namelist() == ["output_0.npy"]     # CRCs check out


def test_a_stale_build_asks_for_setup_again(host_cpp, models, tmp_path, monkeypatch):
    monkeypatch.setattr(native_runner, "source_hash", lambda: "0123456789abcdef")
    with pytest.raises(DeviceError, match=r"other sources .*run `edgepack device setup host-cpp`"):
        run_on_device(host_cpp, models.pte, models.inputs("nchw"), workdir=tmp_path, **KW)


def test_emulator_setup_without_the_cross_compiler_records_why(tmp_path, monkeypatch):
    from edgepack.devices import qemu_setup

    monkeypatch.setattr(native_runner, "_compiler", lambda arch: "aarch64-no-such-g++")
    said = []
    record = qemu_setup._install_native(tmp_path, "executorch_cpp", said.append)
    assert record["ok"] is False and record["site"] is None
    assert record["reason"] == ("aarch64-no-such-g++ not found: the aarch64 C++ runner needs it "
                                "(apt-get install g++-aarch64-linux-gnu)")
    assert not (tmp_path / "site-packages" / "executorch_cpp").exists() and said


# -------------------------------------------------------------------------- the emulator (aarch64)


@pytest.mark.emulator
@pytest.mark.parametrize("kind", ["pte", "pte_int8"])
def test_qemu_cpp_runs_arm_kernels(qemu_root, models, tmp_path, kind):
    model, inputs = getattr(models, kind), models.inputs("nchw")
    arm = run_on_device("qemu-aarch64", model, inputs, workdir=tmp_path, **KW)
    host = models.executorch_outputs(model, inputs)
    ops = check_result(arm.result, 6)
    assert arm.result["arch"] == "aarch64" and arm.result["emulated"] is True
    assert "asimd" in arm.result["cpu"]["isa"] and "emulated" in arm.result["cpu"]["model"]
    assert any(op["type"] == "xnnpack" for op in ops.values()), ops
    np.testing.assert_array_equal(arm.outputs[0].argmax(1), host.argmax(1))
    # ARM and x86 kernels round differently: float within 1e-4, int8 within a few output quanta.
    tol = 1e-4 if kind == "pte" else 0.05 * float(np.ptp(host))
    np.testing.assert_allclose(arm.outputs[0], host, rtol=0, atol=tol)


@pytest.mark.emulator
def test_qemu_cpp_int64_ids(qemu_root, models, tmp_path):
    arm = run_on_device("qemu-aarch64", models.pte_ids, models.ids(), workdir=tmp_path, **KW)
    assert check_result(arm.result, 6)["embedding.out"]["calls"] == 1
    expected = models.executorch_outputs(models.pte_ids, models.ids())
    np.testing.assert_allclose(arm.outputs[0], expected, rtol=1e-5, atol=1e-5)
