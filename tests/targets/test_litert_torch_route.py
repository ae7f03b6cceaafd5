"""tflite-int8 through litert-torch + ai-edge-quantizer: models onnx2tf cannot convert (a
ViT-like classifier with self-attention, LayerNorm and exact GELU; a text encoder with
two int64 inputs), converted to full int8, run with LiteRT, compared with torch."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import ConversionError
from edgepack.targets._litert_torch import convert_litert_torch

SEQ = 16
VOCAB = 50


def make_vit(classes: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))   # exact (erf) GELU

        def forward(self, x, pad=None):
            y = self.n1(x)
            x = x + self.attn(y, y, y, key_padding_mask=pad, need_weights=False)[0]
            return x + self.mlp(self.n2(x))

    class TinyViT(nn.Module):
        def __init__(self, d: int = 16):
            super().__init__()
            self.patch = nn.Conv2d(3, d, 4, 4)
            self.cls = nn.Parameter(torch.zeros(1, 1, d))
            self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
            self.block = Block(d)
            self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.norm(self.block(x)[:, 0]))

    class TextEncoder(nn.Module):
        """int64 ids + int64 mask -> masked mean of a transformer layer's output."""

        def __init__(self, d: int = 16):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, d)
            self.block = Block(d)
            self.norm = nn.LayerNorm(d)

        def forward(self, input_ids, attention_mask):
            x = self.block(self.emb(input_ids), attention_mask == 0)
            m = attention_mask.unsqueeze(-1).to(x.dtype)
            return (self.norm(x) * m).sum(1) / m.sum(1).clamp(min=1.0)

    return TinyViT, TextEncoder


@pytest.fixture(scope="module")
def vit(blobs):
    """(trained ViT-like model, calibration x, evaluation x)."""
    import torch

    torch.manual_seed(0)
    model = make_vit(4)[0]()     # conftest's blobs: 4 classes, 3x16x16
    x, y = blobs(256, seed=11)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # small tensors: more threads only spin on a busy box
    try:
        for step in range(60):
            rows = slice((step % 4) * 64, (step % 4 + 1) * 64)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.from_numpy(x[rows])), torch.from_numpy(y[rows])).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    x_eval, _ = blobs(32, seed=12)
    return model.eval(), x[:32], x_eval


@pytest.fixture(scope="module")
def text():
    """(text encoder with random weights, calibration {ids, mask}, evaluation {ids, mask})."""
    import torch

    torch.manual_seed(0)
    model = make_vit(2)[1]().eval()
    rng = np.random.default_rng(3)

    def batch(n: int) -> dict[str, np.ndarray]:
        lengths = rng.integers(4, SEQ + 1, n)
        mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
        return {"input_ids": rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64) * mask, "attention_mask": mask}

    return model, batch(32), batch(16)


def run_signature(path, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Run every sample through the 'serving_default' signature, quantizing float inputs and
    dequantizing outputs as the file says; (outputs by name, input details, output details)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    ins, outs = runner.get_input_details(), runner.get_output_details()
    results: dict[str, list[np.ndarray]] = {name: [] for name in outs}
    for i in range(len(next(iter(inputs.values())))):
        feed = {}
        for name, x in inputs.items():
            x, (scale, zero_point) = x[i:i + 1], ins[name]["quantization"]
            if scale:
                info = np.iinfo(ins[name]["dtype"])
                x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
            feed[name] = x.astype(ins[name]["dtype"])
        for name, y in runner(**feed).items():
            scale, zero_point = outs[name]["quantization"]
            results[name].append((y.astype(np.float32) - zero_point) * scale if scale else y)
    return {name: np.concatenate(v) for name, v in results.items()}, ins, outs


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def tensor_dtypes(path) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}


def test_vit_full_int8_matches_torch(vit, tmp_path):
    import torch

    model, calibration, x_eval = vit
    out = tmp_path / "vit.tflite"
    meta = convert_litert_torch(model, {"image": calibration[:1]}, {"image": calibration}, "int8", True, "int8",
                                ["logits"], out)
    assert meta["route"] == "litert-torch" and meta["layout"] == "NCHW"
    assert [t["name"] for t in meta["inputs"]] == ["image"] and [t["name"] for t in meta["outputs"]] == ["logits"]
    assert meta["inputs"][0]["dtype"] == "int8" and meta["outputs"][0]["dtype"] == "int8"   # io="int8"
    assert meta["float_ops"] == []                       # attention, softmax, GELU, LayerNorm: all int8
    assert tensor_dtypes(out) <= {"int8", "int32"}       # fully integer (int32: biases, shapes)
    got, ins, outs = run_signature(out, {"image": x_eval})
    assert list(ins) == ["image"] and list(outs) == ["logits"]
    with torch.no_grad():
        want = model(torch.from_numpy(x_eval)).numpy()
    # A trained classifier: int8 keeps the logits' direction and the decision.
    assert cosines(got["logits"], want).mean() >= 0.98
    assert (got["logits"].argmax(1) == want.argmax(1)).mean() >= 0.9


def test_text_encoder_int64_inputs_full_int8(text, tmp_path):
    import torch

    model, calibration, evaluation = text
    out = tmp_path / "text.tflite"
    sample = {k: v[:1] for k, v in calibration.items()}
    meta = convert_litert_torch(model, sample, calibration, "int8", True, "float32", ["embedding"], out)
    assert [t["name"] for t in meta["inputs"]] == ["input_ids", "attention_mask"]   # forward order
    assert [t["name"] for t in meta["outputs"]] == ["embedding"]
    # litert-torch downcasts int64 I/O to int32 (its enable_x64=False default), and says so.
    assert [t["dtype"] for t in meta["inputs"]] == ["int32", "int32"]
    assert any("input_ids" in n and "int32" in n for n in meta["notes"])
    assert meta["outputs"][0]["dtype"] == "float32"       # io="float32": a DEQUANTIZE at the end
    assert "int8" in tensor_dtypes(out)
    got, ins, outs = run_signature(out, evaluation)
    assert set(ins) == {"input_ids", "attention_mask"} and list(outs) == ["embedding"]
    with torch.no_grad():
        want = model(*(torch.from_numpy(evaluation[k]) for k in ("input_ids", "attention_mask"))).numpy()
    # Random weights (nothing to train it on): the embedding is a mean of LayerNorm outputs, whose
    # direction int8 keeps less well than a trained classifier's logits (seen: mean 0.98, min 0.95).
    # With the padding mask quantized away (ai-edge-quantizer's default) it was mean 0.86, min 0.63.
    c = cosines(got["embedding"], want)
    assert c.mean() >= 0.97 and c.min() >= 0.93

    # The padding mask survives quantization: what sits in padded positions changes nothing.
    lengths = evaluation["attention_mask"].sum(1)
    assert lengths.min() < SEQ
    noisy = dict(evaluation, input_ids=np.where(evaluation["attention_mask"] == 1, evaluation["input_ids"],
                                                (evaluation["input_ids"] * 7 + 3) % VOCAB))
    got_noisy, _, _ = run_signature(out, noisy)
    np.testing.assert_array_equal(got_noisy["embedding"], got["embedding"])
    assert any("attention masks" in n for n in meta["notes"]) and "SOFTMAX" in meta["float_ops"]


def test_wrong_number_of_output_names_is_a_conversion_error(vit, tmp_path):
    model, calibration, _ = vit
    with pytest.raises(ConversionError, match="returns 1 tensor"):
        convert_litert_torch(model, {"image": calibration[:1]}, {}, "none", True, "float32", ["a", "b"],
                             tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()
