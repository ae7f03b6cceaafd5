"""The device runner: load one model, run the inputs, time it, write a JSON result.

This file is copied to devices and run there on its own, under whatever Python the
device has (an arm64 Python 3.11 with numpy 1.26 and tflite_runtime in the emulator).
It imports the standard library, numpy and one runtime only: never edgepack.

    python runner.py --model M --inputs X.npz --warmup W --runs N --threads T \
        --out-json R.json --out-outputs O.npz [--outputs a,b] [--profile P] [--runtimes ai_edge_litert,...]

The inputs file holds one array per model input, named as the model names them, each in
its own dtype (int64 ids stay int64). Every sample is run once, batch 1, for the outputs
(float inputs are quantized with the input's scale and zero point when the model takes
int8/uint8; int8/uint8 outputs are dequantized; other dtypes pass as they are), written
one array per output to O.npz; then `warmup` untimed and `runs` timed invocations on the
first sample, each timed alone with time.perf_counter_ns; then, with --profile P, P more
runs with the runtime's per-operator profiler where it has one (OpenVINO's performance
counters; LiteRT's profiler through ai_edge_litert's libLiteRt.so), reported as "profile"
in the JSON.
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
    """A float sample into an int8/uint8 input by its scale and zero point; ids, masks and
    anything else already of an integer or bool type are cast as they are."""
    if not np.issubdtype(dtype, np.integer) or not np.issubdtype(x.dtype, np.floating):
        return x.astype(dtype, copy=False)
    if not scale:
        raise RunnerError(f"the model takes {np.dtype(dtype).name} input without a quantization scale")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    return y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y.copy()


def _version(dist: str, module) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return str(getattr(module, "__version__", "unknown"))


# --------------------------------------------------------------------------- runtimes
# Each session: __init__ loads the model (timed as init_ms); `input_names` are the model's
# own input names in order; set_inputs({name: one sample, batch 1}) feeds every input,
# each in its own dtype (float samples are quantized for int8 inputs); invoke() runs it;
# outputs() returns every output in the model's order (int8/uint8 outputs dequantized to
# float32, other dtypes as they are) and `output_names` names them.


def _pick(given: dict, names: list, what: str) -> list:
    """The given arrays in the model's order: by name when every name matches, else by
    position when the counts agree (a file whose tensors the converter renamed)."""
    if set(given) == set(names):
        return [given[n] for n in names]
    if len(given) == len(names):
        return list(given.values())
    raise RunnerError(f"the model takes {len(names)} {what} ({', '.join(names)}); the inputs file holds "
                      f"{len(given)} ({', '.join(given)})")


class TFLiteSession:
    @staticmethod
    def load_runtime(module_name: str) -> None:
        importlib.import_module(module_name + ".interpreter")

    def __init__(self, module_name: str, model: str, threads: int):
        module = importlib.import_module(module_name + ".interpreter")
        self.runtime = {"name": module_name,
                        "version": _version("ai-edge-litert" if module_name == "ai_edge_litert" else "tflite-runtime",
                                            importlib.import_module(module_name))}
        self.model_path, self.threads = model, threads
        self.interpreter = module.Interpreter(model_path=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        by_index = {d["index"]: d for d in self.interpreter.get_input_details()}
        out_by_index = {d["index"]: d for d in self.interpreter.get_output_details()}
        # The signature names inputs and outputs as the model did ("input_ids", "boxes"); the
        # tensor names are the converter's. Without a signature: tensor order and names.
        sig = _tflite_signature(self.interpreter)
        if sig and set(sig["inputs"].values()) == set(by_index) and set(sig["outputs"].values()) == set(out_by_index):
            self.inputs = [(name, by_index[i]) for name, i in sig["inputs"].items()]
            self.outputs_ = [(name, out_by_index[i]) for name, i in sig["outputs"].items()]
        else:
            self.inputs = [(d["name"], d) for d in self.interpreter.get_input_details()]
            self.outputs_ = [(d["name"], d) for d in self.interpreter.get_output_details()]
        self.input_names = [n for n, _ in self.inputs]
        self.output_names = [n for n, _ in self.outputs_]
        self.io = {"inputs": [dict(_tfl_detail(d), name=n) for n, d in self.inputs],
                   "outputs": [dict(_tfl_detail(d), name=n) for n, d in self.outputs_]}

    def set_inputs(self, xs: list) -> None:
        for (_, d), x in zip(self.inputs, xs):
            scale, zp = d["quantization"]
            self.interpreter.set_tensor(d["index"], _quantize(x, d["dtype"], scale, zp))

    def invoke(self) -> None:
        self.interpreter.invoke()

    def outputs(self) -> list:
        out = []
        for _, d in self.outputs_:
            scale, zp = d["quantization"]
            out.append(_dequantize(self.interpreter.get_tensor(d["index"]), scale, zp))
        return out

    def profile(self, xs: list, n: int) -> dict | None:
        """LiteRT's profiler, through its C API, averaged over n runs of a second compile of
        the model with profiling on: ai_edge_litert >= 2.2 only (the Python API has none, and
        tflite_runtime ships no C API). None, with a note in `runtime`, where it cannot run."""
        if self.runtime["name"] != "ai_edge_litert" or _version_tuple(self.runtime["version"]) < (2, 2):
            return None
        feeds = [_quantize(x, d["dtype"], *d["quantization"]) for (_, d), x in zip(self.inputs, xs)]
        try:
            with _LiteRtProfiledModel(self.model_path, self.threads) as model:
                return model.profile(dict(zip(self.input_names, feeds)), n)
        except (OSError, AttributeError, ValueError, RunnerError) as e:   # no library or symbol, a failed call
            self.runtime["profile_note"] = f"LiteRT profiler unavailable: {e}"
            return None


def _tflite_signature(interpreter) -> dict | None:
    """{"inputs": {name: tensor index}, "outputs": {...}} of the file's first signature, or None.
    Outputs in the order the model returned them: a TF signature stores them sorted by name,
    but the tensors' indices follow the graph's output order."""
    try:
        full = interpreter._get_full_signature_list()
    except AttributeError:
        return None
    if not full:
        return None
    sig = full.get("serving_default") or next(iter(full.values()))
    order = [d["index"] for d in interpreter.get_output_details()]
    outputs = sorted(sig["outputs"].items(), key=lambda kv: order.index(kv[1]) if kv[1] in order else 0)
    in_order = [d["index"] for d in interpreter.get_input_details()]
    inputs = sorted(sig["inputs"].items(), key=lambda kv: in_order.index(kv[1]) if kv[1] in in_order else 0)
    return {"inputs": dict(inputs), "outputs": dict(outputs)}


def _tfl_detail(d: dict) -> dict:
    scale, zp = d["quantization"]
    return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale), "zero_point": int(zp)}


def _version_tuple(version: str) -> tuple:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# LiteRT's C API (litert/c/*.h of LiteRT 2.2 and 2.3), reached with ctypes: ai_edge_litert's
# libLiteRt.so exports it, and its profiler is the only per-operator timing LiteRT has.

class _LiteRtMemoryUsage(ctypes.Structure):
    _fields_ = [("total_allocated_bytes", ctypes.c_size_t), ("in_use_allocated_bytes", ctypes.c_size_t),
                ("private_footprint_bytes", ctypes.c_size_t)]


class _LiteRtProfiledEvent(ctypes.Structure):   # ProfiledEventData, litert_profiler_event.h
    _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int),
                ("start_timestamp_us", ctypes.c_uint64), ("elapsed_time_us", ctypes.c_uint64),
                ("begin_mem_usage", _LiteRtMemoryUsage), ("end_mem_usage", _LiteRtMemoryUsage),
                ("event_metadata1", ctypes.c_uint64), ("event_metadata2", ctypes.c_uint64),
                ("event_source", ctypes.c_int)]


LITERT_OPERATOR_EVENT = 1 << 1            # a TFLite kernel: metadata1 its node, metadata2 its subgraph
LITERT_DELEGATE_OPERATOR_EVENT = 1 << 3   # an op inside a delegate (XNNPACK): metadata1 its index there
LITERT_STATUS = {1: "invalid argument", 2: "out of memory", 3: "runtime failure", 5: "unsupported",
                 6: "not found", 500: "file I/O", 501: "invalid flatbuffer", 504: "compilation"}


class _LiteRtProfiledModel:
    """One .tflite compiled by LiteRT on the CPU (XNNPACK, as the Python interpreter runs it)
    with the runtime's profiler on. A context manager: every handle is destroyed on exit."""

    def __init__(self, model: str, threads: int):
        import ai_edge_litert

        self.lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))
        self.model, self.threads = model, threads
        self.owned: list = []     # (destroy function, handle), destroyed last to first

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        while self.owned:
            destroy, handle = self.owned.pop()
            getattr(self.lib, destroy)(handle)

    def _call(self, fn: str, *args) -> None:
        status = getattr(self.lib, fn)(*args)
        if status:
            raise RunnerError(f"{fn} failed: {LITERT_STATUS.get(status, 'status')} ({status})")

    def _new(self, fn: str, destroy: str | None, *args) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._call(fn, *args, ctypes.byref(handle))
        if destroy:
            self.owned.append((destroy, handle))
        return handle

    def _add_toml_options(self, options, identifier: str, toml: str) -> None:
        """Runtime and CPU options travel as TOML strings in opaque options, which the
        runtime frees with the destructor given here (libc's free for a strdup'ed copy)."""
        libc = ctypes.CDLL(None)
        libc.strdup.restype, libc.strdup.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        payload = libc.strdup(toml.encode())
        opaque = self._new("LiteRtCreateOpaqueOptions", None, identifier.encode(), ctypes.c_void_p(payload),
                           ctypes.cast(libc.free, ctypes.c_void_p))
        status = self.lib.LiteRtAddOpaqueOptions(options, opaque)
        if status:   # not added: still ours to free
            self.lib.LiteRtDestroyOpaqueOptions(opaque)
            raise RunnerError(f"LiteRtAddOpaqueOptions failed: status {status}")

    def _buffers(self, env, compiled, signature, kind: str, count: int) -> list:
        buffers = []
        for i in range(count):
            tensor = self._new(f"LiteRtGetSignature{kind}TensorByIndex", None, signature, ctypes.c_size_t(i))
            tensor_type = ctypes.create_string_buffer(256)   # LiteRtRankedTensorType (72 bytes), opaque here
            self._call("LiteRtGetRankedTensorType", tensor, tensor_type)
            requirements = self._new(f"LiteRtGetCompiledModel{kind}BufferRequirements", None, compiled,
                                     ctypes.c_size_t(0), ctypes.c_size_t(i))
            buffers.append(self._new("LiteRtCreateManagedTensorBufferFromRequirements", "LiteRtDestroyTensorBuffer",
                                     env, tensor_type, requirements))
        return buffers

    def _write(self, buffer, x: np.ndarray, name: str) -> None:
        size = ctypes.c_size_t()
        self._call("LiteRtGetTensorBufferSize", buffer, ctypes.byref(size))
        data = np.ascontiguousarray(x)
        if data.nbytes > size.value:
            raise RunnerError(f"input {name}: {data.nbytes} bytes for a {size.value}-byte LiteRT buffer")
        addr = ctypes.c_void_p()
        self._call("LiteRtLockTensorBuffer", buffer, ctypes.byref(addr), ctypes.c_int(1))   # write
        ctypes.memmove(addr, data.ctypes.data, data.nbytes)
        self._call("LiteRtUnlockTensorBuffer", buffer)

    def profile(self, feeds: dict, n: int) -> dict | None:
        """{"source": "litert-profiler", ...} over n profiled runs after one unprofiled one;
        `feeds` are the model's inputs by name (or in order), already in their dtypes."""
        env = self._new("LiteRtCreateEnvironment", "LiteRtDestroyEnvironment", ctypes.c_int(0), None)
        model = self._new("LiteRtCreateModelFromFile", "LiteRtDestroyModel", env, self.model.encode())
        options = self._new("LiteRtCreateOptions", "LiteRtDestroyOptions")
        self._call("LiteRtSetOptionsHardwareAccelerators", options, ctypes.c_int(1))   # CPU
        self._add_toml_options(options, "runtime_options_string", "enable_profiling = true\n")
        self._add_toml_options(options, "xnnpack", f"num_threads = {self.threads}\n")
        compiled = self._new("LiteRtCreateCompiledModel", "LiteRtDestroyCompiledModel", env, model, options)
        signature = self._new("LiteRtGetModelSignature", None, model, ctypes.c_size_t(0))
        n_in, n_out = ctypes.c_size_t(), ctypes.c_size_t()
        self._call("LiteRtGetNumSignatureInputs", signature, ctypes.byref(n_in))
        self._call("LiteRtGetNumSignatureOutputs", signature, ctypes.byref(n_out))
        names = []
        for i in range(n_in.value):
            name = ctypes.c_char_p()
            self._call("LiteRtGetSignatureInputName", signature, ctypes.c_size_t(i), ctypes.byref(name))
            names.append(name.value.decode())
        ins = self._buffers(env, compiled, signature, "Input", n_in.value)
        outs = self._buffers(env, compiled, signature, "Output", n_out.value)
        for name, buffer, x in zip(names, ins, _pick(feeds, names, "inputs")):
            self._write(buffer, x, name)
        in_array = (ctypes.c_void_p * len(ins))(*ins)
        out_array = (ctypes.c_void_p * len(outs))(*outs)
        args = (compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(ins)), in_array, ctypes.c_size_t(len(outs)),
                out_array)

        profiler = self._new("LiteRtCompiledModelGetProfiler", None, compiled)   # the compiled model's own
        if not profiler:
            raise RunnerError("the compiled model has no profiler")
        self._call("LiteRtRunCompiledModel", *args)   # first run: XNNPACK sets up
        self._call("LiteRtResetProfiler", profiler)
        self._call("LiteRtStartProfiler", profiler)
        for _ in range(n):
            self._call("LiteRtRunCompiledModel", *args)
        self._call("LiteRtStopProfiler", profiler)
        count = ctypes.c_int()
        self._call("LiteRtGetNumProfilerEvents", profiler, ctypes.byref(count))
        events = (_LiteRtProfiledEvent * max(count.value, 1))()
        if count.value:
            self._call("LiteRtGetProfilerEvents", profiler, count, events)
        return _litert_ops(events[:count.value], n)


def _litert_ops(events: list, n: int) -> dict | None:
    """Per-operator means from the profiler's events. XNNPACK reports each op it runs; the
    kernels it did not take are TFLite's own. A delegate's node, where the delegate also
    reports its ops, would count them twice: it is left out."""
    delegated = any(e.event_type == LITERT_DELEGATE_OPERATOR_EVENT for e in events)
    totals: dict = {}
    for e in events:
        tag = (e.tag or b"?").decode(errors="replace")
        if e.event_type == LITERT_DELEGATE_OPERATOR_EVENT:
            key = (f"{tag} #{e.event_metadata1}", "XNNPACK")
        elif e.event_type == LITERT_OPERATOR_EVENT and not (delegated and "delegate" in tag.lower()):
            node = f"{e.event_metadata2}:{e.event_metadata1}" if e.event_metadata2 else str(e.event_metadata1)
            key = (f"{tag} #{node}", "TFLite kernel")
        else:
            continue   # run phases, telemetry
        us, calls = totals.get(key, (0, 0))
        totals[key] = (us + e.elapsed_time_us, calls + 1)
    if not totals:
        return None
    # The profiler counts whole microseconds: an op faster than that shows 0.
    ops = [{"name": name, "type": kind, "ms": us / 1e3 / n, "calls": max(1, round(calls / n))}
           for (name, kind), (us, calls) in totals.items()]
    return {"source": "litert-profiler", "runs": n, "ops": sorted(ops, key=lambda o: -o["ms"])}


class OpenVINOSession:
    @staticmethod
    def load_runtime(module_name: str) -> None:
        import openvino  # noqa: F401

    def __init__(self, module_name: str, model: str, threads: int):
        import openvino as ov

        version = ov.get_version() if hasattr(ov, "get_version") else ov.__version__
        self.runtime = {"name": "openvino", "version": version}
        core = ov.Core()
        # f32 everywhere: the CPU plugin's default is f16 on ARM and bf16 on AMX Xeons, whose
        # outputs stray far from the ones the bundle was validated with (seen: 29% of the
        # output range for an int8 detector on ARM). The manifest tells app teams the same.
        self.core, self.model = core, core.read_model(model)
        self.config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(self.model, "CPU", self.config)
        # On ARM the CPU plugin may run in f16 by default: say which precision ran.
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.runtime["inference_precision"] = getattr(precision, "to_string", precision.__str__)()
        self.request = compiled.create_infer_request()
        self.in_ports = list(compiled.inputs)
        self.out_ports = list(compiled.outputs)
        self.in_types = [p.get_element_type().to_dtype() for p in self.in_ports]
        self.input_names = [_ov_name(p, i, "input") for i, p in enumerate(self.in_ports)]
        self.output_names = [_ov_name(p, i, "output") for i, p in enumerate(self.out_ports)]
        self.io = {"inputs": [_ov_detail(p) for p in self.in_ports], "outputs": [_ov_detail(p) for p in self.out_ports]}

    def set_inputs(self, xs: list) -> None:
        import openvino as ov

        for i, (x, t) in enumerate(zip(xs, self.in_types)):
            self.request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(x.astype(t, copy=False))))

    def invoke(self) -> None:
        self.request.infer()

    def outputs(self) -> list:
        return [np.array(self.request.get_output_tensor(i).data) for i in range(len(self.out_ports))]

    def profile(self, xs: list, n: int) -> dict:
        """The CPU plugin's performance counters, averaged over n runs of a second compile
        with PERF_COUNT on (so the timed runs carry no counting overhead)."""
        import openvino as ov

        request = self.core.compile_model(self.model, "CPU", dict(self.config, PERF_COUNT=True)).create_infer_request()
        for i, (x, t) in enumerate(zip(xs, self.in_types)):
            request.set_input_tensor(i, ov.Tensor(np.ascontiguousarray(x.astype(t, copy=False))))
        totals: dict = {}
        for _ in range(n):
            request.infer()
            for info in request.get_profiling_info():
                if info.status == info.Status.EXECUTED:
                    key = (info.node_name, info.node_type, info.exec_type)
                    totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e3
        ops = [{"name": name, "type": f"{kind} ({impl})", "ms": ms / n, "calls": 1}
               for (name, kind, impl), ms in totals.items()]
        return {"source": "openvino-perf-counters", "runs": n, "ops": sorted(ops, key=lambda o: -o["ms"])}


def _ov_name(port, index: int, kind: str) -> str:
    names = port.get_names()
    if not names:
        return f"{kind}_{index}"
    return port.get_any_name() if len(names) == 1 else sorted(names, key=len)[0]


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
        program = Runtime.get().load_program(model)
        self.method = program.load_method("forward")
        meta = program.metadata("forward")
        # A .pte names neither inputs nor outputs: positions, named by the caller (--outputs).
        self.input_names = [f"input_{i}" for i in range(meta.num_inputs())]
        self.output_names = [f"output_{i}" for i in range(meta.num_outputs())]
        self.xs = []
        self.result = None
        self.io = {"n_inputs": meta.num_inputs(), "n_outputs": meta.num_outputs()}

    def set_inputs(self, xs: list) -> None:
        self.xs = [self.torch.from_numpy(np.ascontiguousarray(x)) for x in xs]

    def invoke(self) -> None:
        self.result = self.method.execute(self.xs)

    def outputs(self) -> list:
        return [o.detach().numpy() for o in self.result]


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
    with np.load(args.inputs) as data:
        given = {k: data[k] for k in data.files}
    if not given:
        raise RunnerError(f"{os.path.basename(args.inputs)} holds no input arrays")
    n = {len(a) if a.ndim else 0 for a in given.values()}
    if len(n) != 1 or 0 in n:
        raise RunnerError(f"{os.path.basename(args.inputs)}: the inputs need the same number (> 0) of samples, "
                          f"got {', '.join(f'{k} {a.shape}' for k, a in given.items())}")
    n_samples = n.pop()

    name = pick_runtime(args.model, args.runtimes.split(","))
    SESSIONS[name].load_runtime(name)
    t0 = time.perf_counter_ns()
    session = SESSIONS[name](name, args.model, args.threads)
    init_ms = (time.perf_counter_ns() - t0) / 1e6
    inputs = _pick(given, session.input_names, "inputs")
    wanted = [o for o in args.outputs.split(",") if o] if args.outputs else session.output_names
    if len(wanted) != len(session.output_names):
        raise RunnerError(f"the model has {len(session.output_names)} outputs ({', '.join(session.output_names)}); "
                          f"expected {len(wanted)} ({', '.join(wanted)})")
    # Outputs by name where the file names them as expected, else by position.
    order = ([session.output_names.index(w) for w in wanted] if set(wanted) == set(session.output_names)
             else list(range(len(wanted))))

    per_output = [[] for _ in wanted]
    for i in range(n_samples):
        session.set_inputs([x[i:i + 1] for x in inputs])
        session.invoke()
        got = session.outputs()
        for k, j in enumerate(order):
            per_output[k].append(got[j])
    outputs = {}
    for w, parts in zip(wanted, per_output):
        batched = all(o.ndim >= 1 and o.shape[0] == 1 for o in parts)
        outputs[w] = np.concatenate(parts) if batched else np.stack(parts)
    tmp = args.out_outputs + ".tmp.npz"
    np.savez(tmp, **outputs)
    os.replace(tmp, args.out_outputs)

    session.set_inputs([x[:1] for x in inputs])
    for _ in range(args.warmup):
        session.invoke()
    samples = []
    for _ in range(args.runs):
        t = time.perf_counter_ns()
        session.invoke()
        samples.append((time.perf_counter_ns() - t) / 1e6)

    profile = None
    if args.profile and hasattr(session, "profile"):
        profile = session.profile([x[:1] for x in inputs], args.profile)

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
        "n_inputs": int(n_samples),
        "outputs": list(wanted),
        "io": session.io,
        # Per-operator times where the runtime reports them (None where it cannot).
        "profile": profile,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run one model on this device and time it.")
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True,
                   help=".npz with one array per model input (named as the model's inputs, in its order and layout)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-outputs", required=True, help=".npz to write, one array per output")
    p.add_argument("--outputs", default="", help="output names, in order (default: the model's own)")
    p.add_argument("--profile", type=int, default=0,
                   help="after timing, this many more runs with per-operator profiling where the runtime has it")
    p.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                   help="runtimes to try, in order of preference (comma-separated module names)")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.runs < 1 or args.threads < 1 or args.profile < 0:
        p.error("--warmup and --profile must be >= 0, --runs and --threads >= 1")
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
