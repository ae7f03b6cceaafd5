"""The layer analysis and the sensitivity simulation, in torch alone (the real files are
checked in tests/stages/test_recovery.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.layers import find_layers, float_region
from edgepack.sensitivity import QuantSim, fake_quant, measure, quantize_weight
from tests.zoo import outlier


class SharedRelu(nn.Module):
    """One ReLU module after two convolutions, a residual add and a functional pool."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.relu(self.a(x))
        z = self.relu(self.b(y)) + y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


def test_layers_in_execution_order_with_fused_tails_and_consumers():
    layers = find_layers(outlier.make_model(), {"input": np.zeros((1, *outlier.SHAPE), np.float32)})
    assert [lay.path for lay in layers] == ["stem.0", "dw1.0", "pw1.0", "dw2.0", "pw2.0", "fc"]
    dw1 = layers[1]
    assert dw1.tail == ("dw1.1", "dw1.2") and dw1.depthwise and dw1.consumers == ("pw1.0",)
    assert layers[4].consumers == ("fc",)            # through the pool and the flatten
    assert [lay.path for lay in float_region(layers, [dw1])] == ["dw1.0", "pw1.0"]


def test_a_shared_relu_and_a_residual_add():
    layers = find_layers(SharedRelu(), {"input": np.zeros((1, 3, 8, 8), np.float32)})
    a, b, _fc = layers
    assert a.tail == ("relu",) and b.tail == ("relu",)
    assert a.consumers == ("b", "fc")                # directly, and through the residual add
    assert b.consumers == ("fc",)


def test_the_outlier_layer_ranks_first_and_weights_are_restored(outlier_trained):
    model, splits = outlier_trained
    x = {"input": splits["data"][0][:32]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = find_layers(model, {k: v[:1] for k, v in x.items()})
    result = measure(model, layers, x, sim=QuantSim("asymmetric"))
    rows = result["layers"]
    assert rows[0]["module_path"] == "dw1.0" and rows[0]["rank"] == 1
    assert rows[0]["sqnr_db"] < 3 and rows[1]["sqnr_db"] > 20
    # everything but dw1 quantized is fine; dw1 alone is not
    assert rows[0]["all_but_sqnr_db"] > 20 and result["all_quantized_sqnr_db"] < 3
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # int4 weights alone: every layer costs something, none collapses the model
    int4 = measure(model, layers, x, scheme="int4-weights", block_size=32)
    assert all(10 < r["sqnr_db"] < 60 for r in int4["layers"])


def test_quantizers():
    w = torch.tensor([[1.0, -0.3], [100.0, 3.0]])
    per_channel = quantize_weight(w, "int8", True, 0)
    assert torch.allclose(per_channel[0], torch.tensor([1.0, -0.3]), atol=1 / 127)
    per_tensor = quantize_weight(w, "int8", False, 0)
    assert per_tensor[0, 1] == 0                      # 0.3 is under half a step of 100/127
    x = torch.linspace(0, 10, 11)
    assert torch.allclose(fake_quant(x, 0.0, 10.0, "asymmetric"), x, atol=10 / 255)
    assert fake_quant(torch.tensor([20.0]), 0.0, 10.0, "symmetric").item() == pytest.approx(10.0)
