"""The quantizable layers of a torch model, as the converters will see them.

A layer is a Conv or Linear module, found by running the model once. Two facts about each,
from that run, decide how the targets quantize it:

- its *tail*: the BatchNorm and ReLU/ReLU6/Hardtanh modules applied straight to its output
  (each reads the previous one's output tensor). Every converter folds the BatchNorm into the
  weights and fuses the activation, so the tensor a target quantizes is the tail's output,
  not the Conv's own.
- its *consumers*: the layers that read that output, directly or through ops without weights
  (pooling, reshapes, additions, functional activations), found by walking autograd's graph
  back from each layer's input. Keeping a layer's output in float means keeping its consumers
  in float too: an int8 kernel takes int8 input, so a float layer feeding an int8 layer is
  requantized on the way (measured on the outlier model: floating the depthwise layer alone,
  or the pointwise layer alone, restores nothing on LiteRT and XNNPACK; both together do).

Layers are numbered in execution order, which is the order of their ops in every graph the
exporters write (torch.export, ONNX, LiteRT): targets use it to find a layer's op when the
file's names do not carry the module path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .arrays import Arrays, head, to_torch

_FUSED = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "ReLU", "ReLU6", "Hardtanh")
_ACTIVATIONS = ("ReLU", "ReLU6", "Hardtanh")


@dataclass(frozen=True)
class Layer:
    index: int                      # execution order among the quantizable layers
    path: str                       # module path in the user's model: "features.3.conv"
    op: str                         # "Conv2d 3x3 depthwise", "Linear 160->10"
    weight_shape: tuple[int, ...]
    tail: tuple[str, ...] = ()      # fused into its output: BatchNorm, ReLU (module paths)
    consumers: tuple[str, ...] = ()  # paths of the layers that read its output
    depthwise: bool = False

    @property
    def modules(self) -> tuple[str, ...]:
        return (self.path, *self.tail)

    @property
    def weight_numel(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "module_path": self.path, "op": self.op, "fused": list(self.tail),
                "consumers": list(self.consumers), "params": self.weight_numel}


@dataclass
class _Call:
    name: str
    module: Any
    inputs: list[Any]
    output: Any
    layer: int | None = None
    tail: list[str] = field(default_factory=list)
    tail_outputs: list[Any] = field(default_factory=list)


def quantizable(module: Any) -> bool:
    from torch import nn

    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


def find_layers(model: Any, example: Arrays) -> list[Layer]:
    """Every Conv/Linear that runs on `example` (one sample is enough), in execution order, with
    its fused tail and its consumers. A module run twice (shared weights) counts once."""
    import torch

    calls: list[_Call] = []
    hooks = []

    def hook(module: Any, inputs: tuple[Any, ...], output: Any, name: str) -> None:
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        calls.append(_Call(name, module, tensors, output))

    for name, m in model.named_modules():
        if name and not list(m.children()):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            args = [t.clone().requires_grad_(t.is_floating_point()) for t in to_torch(head(example, 1))]
            model(*args)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    layers: list[_Call] = []
    seen: set[str] = set()
    for i, c in enumerate(calls):
        if not quantizable(c.module) or c.name in seen:
            continue
        seen.add(c.name)
        c.layer = len(layers)
        layers.append(c)
        out = c.output
        c.tail_outputs = [out]
        for nxt in calls[i + 1:]:
            if type(nxt.module).__name__ not in _FUSED or not nxt.inputs or nxt.inputs[0] is not out:
                if nxt.inputs and any(t is out for t in nxt.inputs):
                    break           # something else reads it first: the tail ends here
                continue
            c.tail_outputs.append(nxt.output)
            out = nxt.output
            c.tail.append(nxt.name)
            if type(nxt.module).__name__ in _ACTIVATIONS:
                break

    # autograd node -> the layer whose (tail) output it made
    made_by: dict[Any, int] = {}
    for c in layers:
        for t in c.tail_outputs:
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                made_by[t.grad_fn] = c.layer
    producers: dict[int, set[int]] = {c.layer: set() for c in layers}
    for c in layers:
        for t in c.inputs:
            producers[c.layer] |= _producers(t.grad_fn, made_by)
    consumers: dict[int, list[str]] = {c.layer: [] for c in layers}
    for c in layers:
        for p in sorted(producers[c.layer]):
            consumers[p].append(c.name)
    return [Layer(c.layer, c.name, _op_name(c.module), tuple(c.module.weight.shape), tuple(c.tail),
                  tuple(consumers[c.layer]), _depthwise(c.module)) for c in layers]


def _producers(fn: Any, made_by: dict[Any, int], limit: int = 10_000) -> set[int]:
    """The layers whose outputs reach this autograd node without passing another layer."""
    found: set[int] = set()
    stack, visited = [fn], set()
    while stack and len(visited) < limit:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        if node in made_by:
            found.add(made_by[node])
            continue
        stack.extend(n for n, _ in getattr(node, "next_functions", ()))
    return found


def _depthwise(m: Any) -> bool:
    return getattr(m, "groups", 1) > 1 and m.groups == getattr(m, "in_channels", 0)


def _op_name(m: Any) -> str:
    kind = type(m).__name__
    if hasattr(m, "kernel_size"):
        k = "x".join(str(s) for s in m.kernel_size)
        extra = " depthwise" if _depthwise(m) else (f" groups={m.groups}" if m.groups > 1 else "")
        return f"{kind} {k}{extra} {m.in_channels}->{m.out_channels}"
    return f"{kind} {m.in_features}->{m.out_features}"


def float_region(layers: list[Layer], chosen: list[Layer]) -> list[Layer]:
    """The layers that run in float when `chosen` keep their outputs in float: each chosen
    layer and its consumers, in execution order."""
    by_path = {lay.path: lay for lay in layers}
    keep = {lay.path for lay in chosen}
    for lay in chosen:
        keep.update(lay.consumers)
    return [by_path[p] for p in sorted(keep, key=lambda p: by_path[p].index) if p in by_path]
