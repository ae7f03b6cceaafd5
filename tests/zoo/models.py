"""The test zoo: tiny stand-ins for the models app teams ship.

Self-contained (imports torch only), so this file can also be handed to edgepack as a user's
model file. Every ``make_<name>()`` returns a fresh module in eval mode whose initial weights
are the same on every call (seeded without touching the global RNG). ``SPECS`` says, per model,
the input names/shapes/dtypes, the output names and the task it is built under.

Design choices kept for the converters (onnx2tf -> TFLite, OpenVINO, ExecuTorch/XNNPACK):
- attention is written out (nn.Linear q/k/v, matmul, softmax), never the fused
  nn.TransformerEncoderLayer / nn.MultiheadAttention fast paths;
- padding masks become an additive bias of -1e4 (finite: quantizers and TFLite dislike -inf);
- static shapes; no data-dependent control flow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

# --------------------------------------------------------------------------- helpers


def _seeded(factory, seed: int):
    """Build under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.eval()


def _conv_bn(cin, cout, k, stride=1, groups=1, act=None, dims=2):
    conv = (nn.Conv2d if dims == 2 else nn.Conv1d)(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(cout)
    layers = [conv, bn]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- mobilenet


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> Hardsigmoid gate."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> (SE) -> 1x1 project, residual when shapes allow."""

    def __init__(self, cin, expand, cout, stride, se=True, act=nn.Hardswish, k=3):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, expand, 1, act=act)
        self.dw = _conv_bn(expand, expand, k, stride=stride, groups=expand, act=act)
        self.se = SqueezeExcite(expand, max(8, expand // 4)) if se else nn.Identity()
        self.project = _conv_bn(expand, cout, 1)

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


class TinyMobileNet(nn.Module):
    """MobileNetV3-small-like: (N, 3, 32, 32) float32 -> (N, 4) logits."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, stride=2, act=nn.Hardswish)             # 16x16
        self.blocks = nn.Sequential(
            InvertedResidual(16, 32, 24, 2, se=True, act=nn.ReLU),           # 8x8
            InvertedResidual(24, 72, 24, 1, se=True),                        # 8x8, residual
            InvertedResidual(24, 72, 32, 2, se=True, k=5),                   # 4x4
        )
        self.head = _conv_bn(32, 96, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(96, 64), nn.Hardswish(), nn.Linear(64, classes))

    def forward(self, x):
        return self.classifier(self.pool(self.head(self.blocks(self.stem(x)))))


def make_mobilenet() -> nn.Module:
    return _seeded(TinyMobileNet, 1)


# --------------------------------------------------------------------------- text encoder


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with nn.Linear q/k/v (BERT/MiniLM layout)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x, bias=None):
        n, t, d = x.shape
        q = self.q(x).reshape(n, t, self.heads, self.dh).transpose(1, 2)        # (N, H, T, dh)
        k = self.k(x).reshape(n, t, self.heads, self.dh).transpose(1, 2)
        v = self.v(x).reshape(n, t, self.heads, self.dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
        if bias is not None:
            scores = scores + bias
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(n, t, d)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (BERT order), ReLU feed-forward."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.attn = SelfAttention(d, heads)
        self.norm1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Linear(ff, d))
        self.norm2 = nn.LayerNorm(d)

    def forward(self, x, bias):
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.ff(x))


class TinyTextEncoder(nn.Module):
    """MiniLM/sentence-transformers-like: ids + mask (int64, (N, 16)) -> masked mean-pooled (N, 32)."""

    def __init__(self, vocab: int = 64, d: int = 32, seq: int = 16, heads: int = 4, ff: int = 64, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.5)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList([EncoderLayer(d, heads, ff) for _ in range(layers)])

    def forward(self, input_ids, attention_mask):
        m = attention_mask.to(torch.float32)                                    # (N, T)
        x = self.norm(self.tok(input_ids) + self.pos)
        bias = ((1.0 - m) * -1e4)[:, None, None, :]                             # (N, 1, 1, T)
        for layer in self.layers:
            x = layer(x, bias)
        w = m.unsqueeze(-1)                                                     # (N, T, 1)
        return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def _text_encoder_init() -> nn.Module:
    """Random init, made less anisotropic so that the untrained encoder's embeddings differ:
    zero Linear biases, small positions, a zero-mean token table (mean pairwise cosine between
    different sentences' embeddings ~0.35 instead of ~0.65)."""
    model = TinyTextEncoder()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                nn.init.zeros_(mod.bias)
        model.pos.mul_(0.2)
        model.tok.weight[1:] -= model.tok.weight[1:].mean(dim=0, keepdim=True)
    return model


def make_text_encoder() -> nn.Module:
    return _seeded(_text_encoder_init, 2)


# --------------------------------------------------------------------------- audio


class TinyAudioCNN(nn.Module):
    """Keyword-spotting-like 1-D CNN on raw audio: (N, 1, 4000) float32 -> (N, 3) logits."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 9, stride=2, padding=4, bias=False), nn.BatchNorm1d(16), nn.ReLU(),   # 2000
            nn.MaxPool1d(4),                                                                     # 500
            nn.Conv1d(16, 24, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(24), nn.ReLU(),  # 250
            nn.MaxPool1d(2),                                                                     # 125
            nn.Conv1d(24, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make_audio() -> nn.Module:
    return _seeded(TinyAudioCNN, 3)


# --------------------------------------------------------------------------- detector


class TinyDetector(nn.Module):
    """BlazeFace/SSD-like single-scale detector on a 4x4 anchor grid.

    (N, 3, 32, 32) -> (scores (N, 16) logits, boxes (N, 16, 4) as (cx, cy, w, h) in [0, 1]).
    Box centres are decoded against the anchor grid: cx = (col + sigmoid(tx)) / 4.
    """

    grid = 4

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            _conv_bn(3, 16, 3, stride=2, act=nn.ReLU),                          # 16x16
            _conv_bn(16, 16, 3, groups=16, act=nn.ReLU), _conv_bn(16, 32, 1, act=nn.ReLU),
            _conv_bn(32, 32, 3, stride=2, groups=32, act=nn.ReLU), _conv_bn(32, 32, 1, act=nn.ReLU),  # 8x8
            _conv_bn(32, 32, 3, stride=2, groups=32, act=nn.ReLU), _conv_bn(32, 48, 1, act=nn.ReLU),  # 4x4
            _conv_bn(48, 48, 3, act=nn.ReLU),                                   # 4x4, wider context
        )
        self.score_head = nn.Conv2d(48, 1, 1)
        self.box_head = nn.Conv2d(48, 4, 1)
        g = self.grid
        ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                                indexing="ij")
        self.register_buffer("anchor_xy", torch.stack([xs, ys], dim=-1).reshape(1, g * g, 2))  # (1, A, 2)

    def forward(self, x):
        f = self.backbone(x)                                                    # (N, 48, 4, 4)
        n = f.shape[0]
        a = self.grid * self.grid
        scores = self.score_head(f).reshape(n, a)                               # (N, A), row-major anchors
        t = self.box_head(f).permute(0, 2, 3, 1).reshape(n, a, 4)               # (N, A, 4)
        s = torch.sigmoid(t)
        centre = (self.anchor_xy + s[..., 0:2]) * (1.0 / self.grid)
        boxes = torch.cat([centre, s[..., 2:4]], dim=-1)
        return scores, boxes


def make_detector() -> nn.Module:
    return _seeded(TinyDetector, 4)


# --------------------------------------------------------------------------- segmenter


def _double_conv(cin, cout):
    return nn.Sequential(_conv_bn(cin, cout, 3, act=nn.ReLU), _conv_bn(cout, cout, 3, act=nn.ReLU))


class TinyUNet(nn.Module):
    """U-Net-like: two downs, two ups with skip connections. (N, 1, 32, 32) -> (N, 2, 32, 32) logits."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.enc1 = _double_conv(1, 8)                                          # 32
        self.enc2 = _double_conv(8, 16)                                         # 16
        self.mid = _double_conv(16, 32)                                         # 8
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)                      # 8 -> 16
        self.dec2 = _double_conv(32, 16)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")                  # 16 -> 32
        self.up1_conv = _conv_bn(16, 8, 3, act=nn.ReLU)
        self.dec1 = _double_conv(16, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1_conv(self.up1(d2)), e1], dim=1))
        return self.head(d1)


def make_segmenter() -> nn.Module:
    return _seeded(TinyUNet, 5)


# --------------------------------------------------------------------------- vit


class MLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()                                                    # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FusedQKVAttention(nn.Module):
    """timm-style attention: one nn.Linear producing q, k, v."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)  # (3, N, H, T, dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh)), dim=-1)
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(n, t, d))


class ViTBlock(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = FusedQKVAttention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = MLP(d, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT-Ti-like: patch-4 conv embedding, class token, 2 pre-norm blocks. (N, 3, 32, 32) -> (N, 4)."""

    def __init__(self, classes: int = 4, d: int = 32, heads: int = 4, mlp: int = 64, depth: int = 2, patch: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        tokens = (32 // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, d) * 0.5)
        self.blocks = nn.Sequential(*[ViTBlock(d, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)                            # (N, 64, d)
        cls = self.cls.expand(p.shape[0], -1, -1)
        t = torch.cat([cls, p], dim=1) + self.pos
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


def make_vit() -> nn.Module:
    return _seeded(TinyViT, 6)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Spec:
    """What the pipeline needs to know about a zoo model (static shapes, batch dim first)."""

    factory: object
    inputs: dict            # name -> (shape without batch, dtype), in forward-argument order
    outputs: tuple          # output names, in return order
    task: str               # classification | agreement | regression | custom metric name
    stands_for: str = ""
    extra: dict = field(default_factory=dict)

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple:
        """Valid example inputs (right dtypes, ids in range, masks with padding)."""
        g = torch.Generator().manual_seed(seed)
        args = []
        for name, (shape, dtype) in self.inputs.items():
            if dtype == torch.int64 and name == "attention_mask":
                lengths = torch.randint(6, shape[0] + 1, (batch,), generator=g)
                args.append((torch.arange(shape[0])[None, :] < lengths[:, None]).to(torch.int64))
            elif dtype == torch.int64:
                args.append(torch.randint(1, 64, (batch, *shape), generator=g, dtype=torch.int64))
            else:
                args.append(torch.randn((batch, *shape), generator=g, dtype=dtype))
        if "attention_mask" in self.inputs and "input_ids" in self.inputs:
            names = list(self.inputs)
            ids, mask = args[names.index("input_ids")], args[names.index("attention_mask")]
            args[names.index("input_ids")] = ids * mask
        return tuple(args)


SPECS: dict[str, Spec] = {
    "mobilenet": Spec(make_mobilenet, {"x": ((3, 32, 32), torch.float32)}, ("logits",), "classification",
                      "MobileNetV3-small image classifier"),
    "text_encoder": Spec(make_text_encoder, {"input_ids": ((16,), torch.int64),
                                             "attention_mask": ((16,), torch.int64)},
                         ("sentence_embedding",), "agreement", "MiniLM-style sentence encoder",
                         # torch 2.13's dynamo ONNX exporter names the aten.embedding node's output
                         # "embedding": output_names=["embedding"] then gives an invalid (non-SSA)
                         # graph. The zoo avoids the name; check_zoo.py probes the hazard.
                         extra={"colliding_output_name": "embedding"}),
    "audio": Spec(make_audio, {"x": ((1, 4000), torch.float32)}, ("logits",), "classification",
                  "keyword-spotting raw-audio 1-D CNN"),
    "detector": Spec(make_detector, {"x": ((3, 32, 32), torch.float32)}, ("scores", "boxes"), "box_iou",
                     "BlazeFace/SSD-style single-shot detector"),
    "segmenter": Spec(make_segmenter, {"x": ((1, 32, 32), torch.float32)}, ("logits",), "pixel_iou",
                      "U-Net semantic segmenter"),
    "vit": Spec(make_vit, {"x": ((3, 32, 32), torch.float32)}, ("logits",), "classification",
                "ViT-Ti/DeiT-tiny image classifier"),
}

NAMES = tuple(SPECS)


def make(name: str) -> nn.Module:
    return SPECS[name].factory()
