"""PT2E pieces the targets share: layers kept out of a quantizer's annotation, and
quantization-aware training with the XNNPACK quantizer's fake quantization.

Keeping a layer in float (the mixed recovery step). ExecuTorch's XNNPACKQuantizer takes no
`None` config for a module (executorch 1.5: "quantization_config == None is not supported
yet"), so `KeepFloat` wraps it: the inner quantizer annotates the graph, then the nodes of the
float layers (their module path, or one of the modules fused into them, is the node's
innermost nn_module_stack entry) lose their annotations, with the pattern ends that belong to
them (a conv-bn-relu pattern keeps its output spec on the ReLU) and the nodes between a float
layer and the float layers that read it (a max-pool would requantize the tensor otherwise).

Quantization-aware training for every target. The torch flows (executorch-arm, and the
litert-torch and onnx2tf routes of tflite-int8) train through PT2E: `prepare_qat_pt2e` with the
XNNPACK quantizer (symmetric per-channel int8 weights, asymmetric per-tensor int8 activations:
what LiteRT and XNNPACK run). openvino-cpu trains the same way, not through NNCF's own QAT:
NNCF 3.4's torch QAT compiles a C++ extension at first use (g++, minutes, ~/.cache/torch_extensions)
or, failing that, runs torch.compile'd reference functions (35 s just to insert the quantizers
of a 30 K-parameter CNN here). Its fake quantization (symmetric int8 weights and activations)
differs from XNNPACK's in the activations' zero point only. After training, the weights go back
into the float student and the target converts it as post-training quantization does.
"""
from __future__ import annotations

from typing import Any

from ..arrays import Arrays, head, to_torch
from ..layers import Layer


def _path(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    return list(stack.values())[-1][0]


def strip_annotations(graph_module: Any, float_layers: tuple[Layer, ...] | list[Layer],
                      layers: tuple[Layer, ...] | list[Layer]) -> int:
    """Remove the quantization annotations of the float layers' nodes (see the module doc);
    returns how many nodes were stripped."""
    from torchao.quantization.pt2e.quantizer.quantizer import (
        Q_ANNOTATION_KEY,
        QuantizationAnnotation,
    )

    floating = {m for lay in float_layers for m in lay.modules}
    owner = {m: lay.path for lay in layers for m in lay.modules}
    float_paths = {lay.path for lay in float_layers}
    nodes = list(graph_module.graph.nodes)
    stripped: set[Any] = set()

    def strip(node: Any) -> None:
        if node in stripped:
            return
        stripped.add(node)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)

    for node in nodes:
        if _path(node) in floating:
            strip(node)
    # pattern ends: an annotated user that quantizes only its output, not its edge from here
    changed = True
    while changed:
        changed = False
        for node in list(stripped):
            for user in node.users:
                ann = user.meta.get(Q_ANNOTATION_KEY)
                if user in stripped or ann is None or not ann._annotated:
                    continue
                if node not in ann.input_qspec_map and ann.output_qspec is not None and _path(user) not in owner:
                    strip(user)
                    changed = True
    # nodes between a float layer and the float layers reading it
    memo: dict[Any, bool] = {}

    def reaches_float(node: Any, seen: set[Any]) -> bool:
        """True when every layer this node's value reaches (through nodes of no layer) is float."""
        if node in memo:
            return memo[node]
        if node in seen:
            return False
        seen.add(node)
        owner_path = owner.get(_path(node) or "")
        if owner_path is not None:
            return owner_path in float_paths
        users = list(node.users)
        result = bool(users) and all(reaches_float(u, seen) for u in users if u.op != "output")
        memo[node] = result
        return result

    for node in list(stripped):
        for user in node.users:
            if user not in stripped and owner.get(_path(user) or "") is None and user.op != "output" \
                    and reaches_float(user, set()):
                _strip_path(user, owner, stripped, strip)
    return len(stripped)


def _strip_path(node: Any, owner: dict[str, str], stripped: set[Any], strip: Any) -> None:
    if node in stripped or owner.get(_path(node) or "") is not None or node.op == "output":
        return
    strip(node)
    for user in node.users:
        _strip_path(user, owner, stripped, strip)


def keep_float(quantizer: Any, float_layers: tuple[Layer, ...], layers: tuple[Layer, ...]) -> Any:
    """`quantizer` with the float layers left out of its annotation (the quantizer itself when none)."""
    if not float_layers:
        return quantizer
    from torchao.quantization.pt2e.quantizer import Quantizer

    class KeepFloat(Quantizer):
        def transform_for_annotation(self, model: Any) -> Any:
            return quantizer.transform_for_annotation(model)

        def annotate(self, model: Any) -> Any:
            quantizer.annotate(model)
            strip_annotations(model, float_layers, layers)
            return model

        def validate(self, model: Any) -> None:
            quantizer.validate(model)

    return KeepFloat()


def xnnpack_quantizer(per_channel: bool, *, dynamic: bool = False, qat: bool = False) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=per_channel, is_dynamic=dynamic, is_qat=qat))


# -- quantization-aware training ----------------------------------------------------------

def qat_module(student: Any, example: Arrays, per_channel: bool, float_layers: tuple[Layer, ...] = (),
               layers: tuple[Layer, ...] = ()) -> Any:
    """The student with XNNPACK fake quantization (prepare_qat_pt2e), as an nn.Module whose
    train()/eval() switch the exported graph's BatchNorm and dropout as PT2E wants."""
    import torch
    from torch import nn
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from ._onnx import batch_dims

    args = to_torch(head(example, 2))       # batch 2: a batch of 1 would be specialised
    student = student.eval()
    graph = torch.export.export(student, args, dynamic_shapes=batch_dims(args)).module()
    quantizer = keep_float(xnnpack_quantizer(per_channel, qat=True), tuple(float_layers), tuple(layers))
    prepared = prepare_qat_pt2e(graph, quantizer)

    class QatModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = prepared

        def forward(self, *inputs: Any) -> Any:
            return self.graph(*inputs)

        def train(self, mode: bool = True) -> QatModule:
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
            self.training = mode
            return self

    return QatModule()


def trained_student(student: Any, qat: Any) -> Any:
    """A copy of the float student with the weights (and BatchNorm statistics) QAT trained."""
    import copy

    trained = {k.removeprefix("graph."): v for k, v in qat.state_dict().items()}
    out = copy.deepcopy(student)
    own = out.state_dict()
    # torch.export drops BatchNorm's num_batches_tracked (a counter, not a weight): kept as it was
    missing = [k for k in own if (k not in trained or trained[k].shape != own[k].shape)
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"QAT: the trained graph has no weights for {', '.join(missing[:5])}")
    out.load_state_dict({k: trained.get(k, v) for k, v in own.items()})
    return out.eval()
