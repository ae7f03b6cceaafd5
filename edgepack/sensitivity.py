"""Per-layer quantization sensitivity: which layer int8 breaks, measured in torch, in seconds.

For every quantizable layer (edgepack.layers): the SQNR (dB) of the model's outputs against
the float model's when that layer alone is quantized, the SQNR of that layer's own output,
and the model's SQNR when every layer but it is quantized; on a small slice of the
calibration draw. Sorted worst first: the first row is the layer to look at.

Why a simulation in torch and not each target's own debugger: it is one mechanism for every
target, costs two forward passes of the slice per layer (a second or two for the default
model), and runs before any converter. A layer "quantized" here is what the target's kernels
do with it: its weights in int8 (per channel or per tensor, symmetric, as every target's
quantizer does) and its output - after the BatchNorm and activation the converters fuse into
it - in int8 per tensor (asymmetric for LiteRT and XNNPACK, symmetric for NNCF's performance
preset), with the range over the slice. Scheme "dynamic" quantizes the layer's input per
sample instead of its output; "int4-weights" only its weights, 4-bit per block.
It predicts the real files' behaviour where it matters: on the outlier model of tests/zoo
(one depthwise channel 1000x wider than the others), the outlier layer comes first, and
keeping it (and its consumer) in float restores the accuracy of the real LiteRT, OpenVINO and
ExecuTorch int8 files (tests/stages/test_recovery.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from .arrays import Arrays, flatten_outputs, to_torch
from .layers import Layer

MAX_DB = 99.0


@dataclass(frozen=True)
class QuantSim:
    """How a target's quantizer treats activations, for the simulation."""

    activations: Literal["asymmetric", "symmetric"] = "asymmetric"


def sqnr_db(ref: Any, got: Any) -> float:
    """10 log10(signal / noise) of `got` against `ref` (torch tensors), capped at MAX_DB."""
    noise = float(((got.double() - ref.double()) ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    if noise == 0:
        return MAX_DB
    return round(min(MAX_DB, 10 * math.log10(max(signal, 1e-30) / noise)), 3)


# -- quantizers -------------------------------------------------------------------------

def quantize_weight(w: Any, scheme: str, per_channel: bool, block_size: int) -> Any:
    """Symmetric int8 (per output channel, or per tensor), or int4 per block of `block_size`
    along each output channel's inputs (per channel when 0): quantized and dequantized."""
    import torch

    if scheme == "int4-weights":
        levels = 7
        flat = w.reshape(w.shape[0], -1)
        if block_size and flat.shape[1] % block_size == 0 and flat.shape[1] > block_size:
            blocks = flat.reshape(flat.shape[0], -1, block_size)
            scale = blocks.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / levels
            return (torch.clamp(torch.round(blocks / scale), -levels - 1, levels) * scale).reshape(w.shape)
        scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
        return (torch.clamp(torch.round(flat / scale), -levels - 1, levels) * scale).reshape(w.shape)
    levels = 127
    if per_channel:
        scale = w.reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(1e-12) / levels
        scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
    else:
        scale = w.abs().max().clamp_min(1e-12) / levels
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def fake_quant(x: Any, lo: float, hi: float, kind: str) -> Any:
    """Per-tensor 8-bit fake quantization of x for the range [lo, hi] (which holds 0)."""
    import torch

    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return x
    if kind == "symmetric":
        if lo >= 0:                                   # unsigned, as NNCF does after a ReLU
            scale = hi / 255
            return torch.clamp(torch.round(x / scale), 0, 255) * scale
        scale = max(-lo, hi) / 127
        return torch.clamp(torch.round(x / scale), -128, 127) * scale
    scale = (hi - lo) / 255
    zero = round(-lo / scale) - 128
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


def _dynamic(x: Any) -> Any:
    """Per-sample asymmetric int8 of a layer's input, as dynamic-range kernels do at run time."""
    import torch

    flat = x.reshape(x.shape[0], -1)
    lo = flat.amin(dim=1).clamp(max=0)
    hi = flat.amax(dim=1).clamp(min=0)
    scale = ((hi - lo) / 255).clamp_min(1e-12).reshape(-1, *([1] * (x.ndim - 1)))
    zero = (torch.round(-lo.reshape(scale.shape) / scale) - 128)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


# -- the measurement --------------------------------------------------------------------

class _Taps:
    """Hooks that find each layer's fused output in every forward (following its tail module by
    module, by tensor identity: a ReLU module shared by several layers is told apart) and
    quantize it for the layers in `active`."""

    def __init__(self, model: Any, layers: list[Layer], scheme: str, kind: str):
        self.layers, self.scheme, self.kind = layers, scheme, kind
        self.active: set[int] = set()
        self.ranges: dict[int, list[float]] = {}
        self.record: dict[int, Any] = {}          # layer index -> its output in the last forward
        self.calibrating = False
        self.current: dict[int, Any] = {}
        modules = dict(model.named_modules())
        self.handles = []
        steps: dict[str, list[tuple[int, int]]] = {}
        for lay in layers:
            for j, name in enumerate(lay.modules):
                steps.setdefault(name, []).append((lay.index, j))
        for name, where in steps.items():
            self.handles.append(modules[name].register_forward_hook(self._hook(where)))
            if self.scheme == "dynamic":
                firsts = [i for i, j in where if j == 0]
                if firsts:
                    self.handles.append(modules[name].register_forward_pre_hook(self._pre_hook(firsts)))

    def _pre_hook(self, layers: list[int]) -> Any:
        def hook(_m: Any, inputs: tuple[Any, ...]) -> Any:
            if any(i in self.active for i in layers) and inputs and inputs[0].is_floating_point():
                return (_dynamic(inputs[0]), *inputs[1:])
            return None
        return hook

    def _hook(self, where: list[tuple[int, int]]) -> Any:
        def hook(_m: Any, inputs: tuple[Any, ...], output: Any) -> Any:
            for index, j in where:
                lay = self.layers[index]
                if j > 0 and (not inputs or inputs[0] is not self.current.get(index)):
                    continue
                self.current[index] = output
                if j == len(lay.modules) - 1:
                    return self._output(index, output)
            return None
        return hook

    def _output(self, index: int, out: Any) -> Any:
        if self.calibrating:
            r = self.ranges.setdefault(index, [math.inf, -math.inf])
            r[0], r[1] = min(r[0], float(out.min())), max(r[1], float(out.max()))
        elif index in self.active and self.scheme == "int8" and index in self.ranges:
            out = fake_quant(out, *self.ranges[index], self.kind)
        self.record[index] = out
        self.current[index] = out
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def measure(model: Any, layers: list[Layer], x: Arrays, *, scheme: str = "int8", per_channel: bool = True,
            block_size: int = 32, sim: QuantSim | None = None) -> dict[str, Any]:
    """{"layers": rows sorted worst first, "all_quantized_sqnr_db", "samples", "seconds", ...}.

    Each row: layer (execution index), module_path, op, sqnr_db (model output, only this layer
    quantized), layer_sqnr_db (its own output), all_but_sqnr_db (every other layer quantized),
    params, fused, consumers. `x`: the slice, in torch layout."""
    import torch

    t0 = time.perf_counter()
    sim = sim or QuantSim()
    modules = dict(model.named_modules())
    weights = {lay.index: modules[lay.path].weight for lay in layers}
    float_w = {i: w.detach().clone() for i, w in weights.items()}
    quant_w = {i: quantize_weight(w, scheme, per_channel, block_size) for i, w in float_w.items()}
    args = to_torch(x)
    taps = _Taps(model, layers, scheme, sim.activations)
    was_training = model.training
    model.eval()

    def forward(active: set[int]) -> tuple[list[Any], dict[int, Any]]:
        taps.active, taps.record, taps.current = active, {}, {}
        with torch.no_grad():
            for i, w in weights.items():
                w.copy_(quant_w[i] if i in active else float_w[i])
            out = flatten_outputs(model(*args))
        return [o.float() for o in out if o.is_floating_point()], dict(taps.record)

    def model_sqnr(ref: list[Any], got: list[Any]) -> float:
        return min((sqnr_db(r, g) for r, g in zip(ref, got)), default=MAX_DB)

    try:
        taps.calibrating = True
        ref, ref_layers = forward(set())
        taps.calibrating = False
        everyone = {lay.index for lay in layers}
        rows = []
        for lay in layers:
            alone, own = forward({lay.index})
            rest, _ = forward(everyone - {lay.index})
            own_db = sqnr_db(ref_layers[lay.index], own[lay.index]) if lay.index in own else None
            rows.append({"layer": lay.index, "module_path": lay.path, "op": lay.op,
                         "sqnr_db": model_sqnr(ref, alone), "layer_sqnr_db": own_db,
                         "all_but_sqnr_db": model_sqnr(ref, rest), "params": lay.weight_numel,
                         "fused": list(lay.tail), "consumers": list(lay.consumers)})
        full, _ = forward(everyone)
    finally:
        with torch.no_grad():
            for i, w in weights.items():
                w.copy_(float_w[i])
        taps.close()
        model.train(was_training)
    rows.sort(key=lambda r: (r["sqnr_db"], r["layer"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return {"layers": rows, "all_quantized_sqnr_db": model_sqnr(ref, full), "samples": len(args[0]),
            "scheme": scheme, "per_channel": per_channel, "activations": sim.activations,
            "method": "fake quantization in torch, one layer at a time (edgepack.sensitivity)",
            "seconds": round(time.perf_counter() - t0, 3)}
