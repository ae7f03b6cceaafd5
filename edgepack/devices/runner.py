"""The device runner: load one model, run the inputs, time it, write a JSON result.

This file is copied to devices and run there on its own, under whatever Python the
device has (an arm64 Python 3.11 with numpy 1.26 and tflite_runtime in the emulator).
It imports the standard library, numpy and one runtime only: never edgepack.

    python runner.py --model M --inputs X.npz --warmup W --runs N --threads T \
        --out-json R.json --out-outputs O.npy [--runtimes ai_edge_litert,tflite_runtime,...]

Every input sample is run once, batch 1, for the outputs (float inputs are quantized
with the input's scale and zero point when the model takes int8/uint8; int8/uint8
outputs are dequantized), then `warmup` untimed and `runs` timed invocations on the
first sample, each timed alone with time.perf_counter_ns.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import platform
import resource
import sys
import time

import numpy as np

SCHEMA = "edgepack.runner/1"

# Which runtimes can load which file, in the default order of preference.
RUNTIMES_BY_SUFFIX = {
    ".tflite": ("ai_edge_litert", "tflite_runtime"),
    ".xml": ("openvino",),
    ".pte": ("executorch",),
}
DEFAULT_RUNTIMES = ("ai_edge_litert", "tflite_runtime", "openvino", "executorch")


class RunnerError(Exception):
    """A problem the runner can name (exit 3): printed as one line on stderr."""


# --------------------------------------------------------------------------- stats


def summarize(samples_ms) -> dict:
    """Latency statistics in ms: mean, population std, linear-interpolated percentiles."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise RunnerError("no latency samples to summarize")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "mean": float(a.mean()), "std": float(a.std()),
        "p50": float(p50), "p90": float(p90), "p99": float(p99),
        "min": float(a.min()), "max": float(a.max()),
    }


# --------------------------------------------------------------------------- cpu facts

X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("neon", "vfpv4", "asimd", "asimdhp", "fphp", "asimddp", "asimdfhm", "i8mm", "bf16",
             "sve", "sve2", "svei8mm", "svebf16", "sme")
# Linux arm64 AT_HWCAP / AT_HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h), for when
# /proc/cpuinfo says nothing about the CPU we run on (qemu-user shows the host's).
ARM64_HWCAP = {"fphp": 9, "asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22, "asimdfhm": 23}
ARM64_HWCAP2 = {"sve2": 1, "svei8mm": 9, "svebf16": 12, "i8mm": 13, "bf16": 14, "sme": 23}
ARM_PARTS = {  # CPU implementer 0x41 (Arm) part numbers of common cores
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


def _cpuinfo() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (first CPU wins)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _arm64_hwcaps() -> list[str]:
    try:
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        hwcap, hwcap2 = getauxval(16), getauxval(26)   # AT_HWCAP, AT_HWCAP2
    except (OSError, AttributeError):
        return []
    found = [name for name, bit in ARM64_HWCAP.items() if hwcap >> bit & 1]
    return found + [name for name, bit in ARM64_HWCAP2.items() if hwcap2 >> bit & 1]


def peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM first: ru_maxrss survives fork+exec on
    Linux, so a runner started from a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 2)   # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)


def cpu_info() -> dict:
    """{"model": ..., "isa": [...]}: what kind of CPU this is and the SIMD extensions it has."""
    info, machine = _cpuinfo(), platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    model = info.get("model name") or info.get("Model") or info.get("Hardware") or ""
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        part = ARM_PARTS.get(info.get("CPU part", "").lower()) if info.get("CPU implementer") == "0x41" else None
        model = " ".join(x for x in (info.get("Model") or info.get("Hardware"), part) if x) or model
        if machine in ("aarch64", "arm64") and not {"asimd", "fp"} & flags:
            flags = set(_arm64_hwcaps())    # /proc/cpuinfo is not this CPU's (emulated)
        isa = [f for f in ARM_FLAGS if f in flags]
    else:
        isa = [f for f in X86_FLAGS if f in flags]
    return {"model": model or machine, "isa": isa}


# --------------------------------------------------------------------------- quantization


def _quantize(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    if not np.issubdtype(dtype, np.integer) or x.dtype == dtype:
        return x.astype(dtype, copy=False)
    if not scale:
        raise RunnerError(f"the model takes {np.dtype(dtype).name} input without a quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    return y.astype(np.float32)


def _version(dist: str, module) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return str(getattr(module, "__version__", "unknown"))


# --------------------------------------------------------------------------- runtimes
# Each session: __init__ loads the model (timed as init_ms); set_input(x) takes one float
# sample with a batch dimension of 1; invoke() runs it; output() returns float32.


class TFLiteSession:
    @staticmethod
    def load_runtime(module_name: str) -> None:
        importlib.import_module(module_name + ".interpreter")

    def __init__(self, module_name: str, model: str, threads: int):
        module = importlib.import_module(module_name + ".interpreter")
        self.runtime = {"name": module_name,
                        "version": _version("ai-edge-litert" if module_name == "ai_edge_litert" else "tflite-runtime",
                                            importlib.import_module(module_name))}
        self.interpreter = module.Interpreter(model_path=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise RunnerError(f"the model has {len(inputs)} inputs; the runner feeds exactly one")
        self.inp, self.out = inputs[0], outputs[0]
        self.io = {"input": _tfl_detail(self.inp), "output": _tfl_detail(self.out), "n_outputs": len(outputs)}

    def set_input(self, x: np.ndarray) -> None:
        scale, zp = self.inp["quantization"]
        self.interpreter.set_tensor(self.inp["index"], _quantize(x, self.inp["dtype"], scale, zp))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def output(self) -> np.ndarray:
        scale, zp = self.out["quantization"]
        return _dequantize(self.interpreter.get_tensor(self.out["index"]), scale, zp)


def _tfl_detail(d: dict) -> dict:
    scale, zp = d["quantization"]
    return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale), "zero_point": int(zp)}


class OpenVINOSession:
    @staticmethod
    def load_runtime(module_name: str) -> None:
        import openvino  # noqa: F401

    def __init__(self, module_name: str, model: str, threads: int):
        import openvino as ov

        version = ov.get_version() if hasattr(ov, "get_version") else ov.__version__
        self.runtime = {"name": "openvino", "version": version}
        core = ov.Core()
        compiled = core.compile_model(core.read_model(model), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        # On ARM the CPU plugin may run in f16 by default: say which precision ran.
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.runtime["inference_precision"] = getattr(precision, "to_string", precision.__str__)()
        if len(compiled.inputs) != 1:
            raise RunnerError(f"the model has {len(compiled.inputs)} inputs; the runner feeds exactly one")
        self.request = compiled.create_infer_request()
        self.in_type = compiled.input(0).get_element_type().to_dtype()
        self.io = {"input": _ov_detail(compiled.input(0)), "output": _ov_detail(compiled.output(0)),
                   "n_outputs": len(compiled.outputs)}

    def set_input(self, x: np.ndarray) -> None:
        import openvino as ov

        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x.astype(self.in_type, copy=False))))

    def invoke(self) -> None:
        self.request.infer()

    def output(self) -> np.ndarray:
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)


def _ov_detail(port) -> dict:
    return {"name": port.get_any_name() if port.get_names() else "", "shape": str(port.get_partial_shape()),
            "dtype": port.get_element_type().to_dtype().name}


class ExecuTorchSession:
    @staticmethod
    def load_runtime(module_name: str) -> None:
        import torch  # noqa: F401
        from executorch.runtime import Runtime

        Runtime.get()   # loads the native library: not part of init_ms

    def __init__(self, module_name: str, model: str, threads: int):
        import torch
        from executorch.runtime import Runtime

        self.torch = torch
        self.runtime = {"name": "executorch", "version": _version("executorch", None)}
        try:   # the XNNPACK delegate's thread pool; absent from some builds
            from executorch.extension.pybindings import portable_lib
            portable_lib._unsafe_reset_threadpool(threads)
        except (ImportError, AttributeError):
            self.runtime["threads_note"] = "thread count not settable in this executorch build"
        self.method = Runtime.get().load_program(model).load_method("forward")
        self.x = None
        self.outputs = None
        self.io = {}

    def set_input(self, x: np.ndarray) -> None:
        self.x = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def invoke(self) -> None:
        self.outputs = self.method.execute([self.x])

    def output(self) -> np.ndarray:
        if self.io.get("n_outputs") is None:
            self.io["n_outputs"] = len(self.outputs)
        return self.outputs[0].detach().numpy().astype(np.float32)


SESSIONS = {"ai_edge_litert": TFLiteSession, "tflite_runtime": TFLiteSession,
            "openvino": OpenVINOSession, "executorch": ExecuTorchSession}


def pick_runtime(model: str, preference) -> str:
    """The first runtime in `preference` that can load `model` and imports here."""
    suffix = os.path.splitext(model)[1].lower()
    if suffix not in RUNTIMES_BY_SUFFIX:
        raise RunnerError(f"no runtime for {os.path.basename(model)}: expected .tflite, .xml or .pte")
    candidates = [r for r in preference if r in RUNTIMES_BY_SUFFIX[suffix]]
    errors = []
    for name in candidates:
        try:
            importlib.import_module(name)
            return name
        except Exception as e:   # ImportError, or a broken native library
            errors.append(f"{name}: {type(e).__name__}: {e}")
    tried = "; ".join(errors) or f"none of {', '.join(RUNTIMES_BY_SUFFIX[suffix])} is in the device's runtimes"
    raise RunnerError(f"no runtime for {suffix} imports here ({tried})")


# --------------------------------------------------------------------------- main


def run(args) -> dict:
    data = np.load(args.inputs)
    if "x" not in data:
        raise RunnerError(f"{os.path.basename(args.inputs)} has no array 'x'")
    x = np.asarray(data["x"], dtype=np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise RunnerError(f"{os.path.basename(args.inputs)}: 'x' holds no samples")

    name = pick_runtime(args.model, args.runtimes.split(","))
    SESSIONS[name].load_runtime(name)
    t0 = time.perf_counter_ns()
    session = SESSIONS[name](name, args.model, args.threads)
    init_ms = (time.perf_counter_ns() - t0) / 1e6

    outputs = []
    for i in range(len(x)):
        session.set_input(x[i : i + 1])
        session.invoke()
        outputs.append(session.output())
    batched = all(o.ndim >= 1 and o.shape[0] == 1 for o in outputs)
    out = np.concatenate(outputs) if batched else np.stack(outputs)
    np.save(args.out_outputs, out.astype(np.float32))

    session.set_input(x[:1])
    for _ in range(args.warmup):
        session.invoke()
    samples = []
    for _ in range(args.runs):
        t = time.perf_counter_ns()
        session.invoke()
        samples.append((time.perf_counter_ns() - t) / 1e6)

    return {
        "schema": SCHEMA,
        "runtime": session.runtime,
        "model": os.path.basename(args.model),
        "arch": platform.machine(),
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "threads": args.threads,
        "warmup": args.warmup,
        "runs": args.runs,
        "init_ms": init_ms,
        "latency_ms": summarize(samples),
        "samples_ms": samples,
        "peak_rss_mb": peak_rss_mb(),
        "n_inputs": int(len(x)),
        "io": session.io,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run one model on this device and time it.")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True, help=".npz with 'x': float32 samples in the model's input layout")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-outputs", required=True)
    p.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                   help="runtimes to try, in order of preference (comma-separated module names)")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.runs < 1 or args.threads < 1:
        p.error("--warmup must be >= 0, --runs and --threads >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except RunnerError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 3
    tmp = args.out_json + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
