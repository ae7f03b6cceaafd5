"""Tiny real models for the device-harness tests, built once per session.

Each builder makes a real artifact with the real toolchain (TFLiteConverter,
openvino's graph API, torch.export + ExecuTorch, PT2E): a 3x3 convolution, ReLU, global
average pool and a dense layer to 10 classes, NHWC 8x8x3 for TFLite, NCHW for the others;
and a .pte that takes int64 token ids (an embedding).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

H = W = 8
C = 3
CLASSES = 10


def _weights():
    rng = np.random.default_rng(0)
    conv = rng.normal(0, 0.5, (3, 3, C, 4)).astype(np.float32)     # HWIO
    dense = rng.normal(0, 0.5, (4, CLASSES)).astype(np.float32)
    bias = rng.normal(0, 0.1, (CLASSES,)).astype(np.float32)
    return conv, dense, bias


def sample_inputs(n: int = 6, layout: str = "nhwc", seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-1, 1, (n, H, W, C)).astype(np.float32)
    return x if layout == "nhwc" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def build_tflite(path: Path, int8: bool) -> Path:
    import tensorflow as tf

    conv, dense, bias = _weights()

    class Net(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, H, W, C], tf.float32)])
        def __call__(self, x):
            y = tf.nn.relu(tf.nn.conv2d(x, conv, strides=1, padding="SAME"))
            y = tf.reduce_mean(y, axis=[1, 2])
            return tf.matmul(y, dense) + bias

    net = Net()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.__call__.get_concrete_function()], net)
    if int8:
        calib = sample_inputs(32, seed=2)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())
    return path


def build_openvino(path: Path) -> Path:
    import openvino as ov
    from openvino import opset13 as ops

    conv, dense, bias = _weights()
    x = ops.parameter([1, C, H, W], np.float32, name="x")
    y = ops.convolution(x, ops.constant(conv.transpose(3, 2, 0, 1).copy()), [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.reduce_mean(ops.relu(y), ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    y = ops.add(ops.matmul(y, ops.constant(dense), False, False), ops.constant(bias[None]))
    ov.save_model(ov.Model([y], [x], "tiny"), str(path))
    return path


def build_pte(path: Path, int8: bool = False) -> Path:
    """float: every op in the XNNPACK delegate but the mean (a CPU kernel). int8: PT2E with
    the XNNPACK quantizer (static, per-channel), calibrated on 32 samples."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    conv, dense, bias = _weights()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(C, 4, 3, padding=1, bias=False)
            self.fc = torch.nn.Linear(4, CLASSES)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(conv.transpose(3, 2, 0, 1).copy()))
                self.fc.weight.copy_(torch.from_numpy(dense.T.copy()))
                self.fc.bias.copy_(torch.from_numpy(bias))

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    sample = (torch.zeros(1, C, H, W),)
    exported = torch.export.export(Net().eval(), sample)
    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for x in torch.from_numpy(sample_inputs(32, "nchw", seed=2)).split(1):
                prepared(x)
        exported = torch.export.export(convert_pt2e(prepared), sample)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


IDS = 5        # token ids per sample of the int64-input model
VOCAB = 16


def build_pte_ids(path: Path) -> Path:
    """int64 token ids -> embedding (a portable kernel: XNNPACK does not take it) -> mean -> dense."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Ids(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(VOCAB, 4)
            self.fc = torch.nn.Linear(4, CLASSES)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(dim=1))

    exported = torch.export.export(Ids().eval(), (torch.zeros(1, IDS, dtype=torch.int64),))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> "Models":
    return Models(tmp_path_factory.mktemp("models"))


class Models:
    """Builds each model on first use, so a test only pays for the toolchains it needs."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def _get(self, name: str, build) -> Path:
        if name not in self._built:
            self._built[name] = build(self.root / name)
        return self._built[name]

    @property
    def tflite_float(self) -> Path:
        return self._get("float.tflite", lambda p: build_tflite(p, int8=False))

    @property
    def tflite_int8(self) -> Path:
        return self._get("int8.tflite", lambda p: build_tflite(p, int8=True))

    @property
    def openvino(self) -> Path:
        return self._get("tiny.xml", build_openvino)

    @property
    def pte(self) -> Path:
        return self._get("tiny.pte", build_pte)

    @property
    def pte_int8(self) -> Path:
        return self._get("int8.pte", lambda p: build_pte(p, int8=True))

    @property
    def pte_ids(self) -> Path:
        return self._get("ids.pte", build_pte_ids)

    def ids(self, n: int = 6) -> Path:
        """Token ids for pte_ids: int64, (n, IDS)."""
        path = self.root / f"ids-{n}.npz"
        if not path.exists():
            np.savez(path, ids=np.random.default_rng(3).integers(0, VOCAB, (n, IDS), dtype=np.int64))
        return path

    @staticmethod
    def executorch_outputs(model: Path, inputs: Path) -> np.ndarray:
        """What the Python ExecuTorch runtime gives for every sample of a one-input .pte, in this
        process (runner.py's executorch session, without a subprocess that imports torch again)."""
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(model)).load_method("forward")
        with np.load(inputs) as z:
            x = z[z.files[0]]
        return np.concatenate([method.execute([torch.from_numpy(x[i:i + 1])])[0].numpy() for i in range(len(x))])

    def inputs(self, layout: str = "nhwc", n: int = 6) -> Path:
        path = self.root / f"inputs-{layout}-{n}.npz"
        if not path.exists():
            np.savez(path, x=sample_inputs(n, layout))
        return path
