"""The shipped CenterNet-style detector: a tiny encoder/decoder with heads at stride 4.

Graph for export (after `fused()`): Conv / ReLU / nearest upsample / Add / Sigmoid only, so ORT QDQ,
PT2E (TFLite) and any NPU compiler handle every op. Input: float32 NCHW RGB x = raw/255, 256x256.
Outputs at stride 4 (64x64 for a 256 tile):
    heatmap (1, C, 64, 64)  class probabilities (sigmoid in graph)
    size    (1, 2, 64, 64)  box width, height in INPUT pixels
    offset  (1, 2, 64, 64)  sub-cell centre offset in output cells, 0..1 (sigmoid in graph)
About 260k parameters.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 4            # output cell = 4x4 input pixels
SIZE_SCALE = 16.0     # size head predicts pixels/16 while training (well-scaled targets); folded on export
HEATMAP_PRIOR = 0.01  # initial heatmap probability (CenterNet/RetinaNet bias init: stable focal loss start)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, bias_init: float = 0.0):
        super().__init__()
        self.body = ConvBNReLU(cin, mid)
        self.out = nn.Conv2d(mid, cout, 1)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, x):
        return self.out(self.body(x))


class CenterNet(nn.Module):
    """Encoder strides 2,4,8,16; top-down path with Add back to stride 4; three heads."""

    def __init__(self, num_classes: int = 1, widths=(16, 32, 64, 80), head_width: int = 32):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.num_classes = num_classes
        self.stem = nn.Sequential(ConvBNReLU(3, w1, stride=2), ConvBNReLU(w1, w1))        # /2
        self.c4 = nn.Sequential(ConvBNReLU(w1, w2, stride=2), ConvBNReLU(w2, w2))         # /4
        self.c8 = nn.Sequential(ConvBNReLU(w2, w3, stride=2), ConvBNReLU(w3, w3))         # /8
        self.c16 = nn.Sequential(ConvBNReLU(w3, w4, stride=2), ConvBNReLU(w4, w4))        # /16
        self.lat16 = ConvBNReLU(w4, w3, k=1)
        self.fuse8 = ConvBNReLU(w3, w3)
        self.lat8 = ConvBNReLU(w3, w2, k=1)
        self.fuse4 = ConvBNReLU(w2, head_width)
        prior_logit = float(torch.logit(torch.tensor(HEATMAP_PRIOR)))
        self.heatmap = Head(head_width, head_width, num_classes, prior_logit)
        self.size = Head(head_width, head_width, 2)
        self.offset = Head(head_width, head_width, 2)
        self.size_scale = SIZE_SCALE

    def features(self, x):
        f4 = self.c4(self.stem(x))
        f8 = self.c8(f4)
        f16 = self.c16(f8)
        p8 = self.fuse8(F.interpolate(self.lat16(f16), scale_factor=2.0, mode="nearest") + f8)
        return self.fuse4(F.interpolate(self.lat8(p8), scale_factor=2.0, mode="nearest") + f4)

    def raw(self, x):
        """Training outputs: heatmap logits, size in pixels, offset logits."""
        f = self.features(x)
        size = self.size(f)
        if self.size_scale != 1.0:  # python-level: the fused export graph has no Mul
            size = size * self.size_scale
        return self.heatmap(f), size, self.offset(f)

    def forward(self, x):
        hm, size, off = self.raw(x)
        return torch.sigmoid(hm), size, torch.sigmoid(off)


def _fold(seq: nn.Sequential) -> nn.Sequential:
    """Conv+BN(+ReLU) -> Conv(with bias)(+ReLU), eval-mode statistics."""
    conv, bn = seq[0], seq[1]
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    return nn.Sequential(fused, *list(seq)[2:])


def fused(model: CenterNet) -> CenterNet:
    """An export copy: BatchNorm folded into the convs, size scale folded into the size head."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, ConvBNReLU):
                setattr(mod, child_name, _fold(child))
    with torch.no_grad():
        m.size.out.weight.mul_(m.size_scale)
        m.size.out.bias.mul_(m.size_scale)
    m.size_scale = 1.0
    return m


def build(num_classes: int = 1) -> CenterNet:
    return CenterNet(num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    m = build()
    print("params", count_params(m))
    x = torch.rand(1, 3, 256, 256)
    m.eval()
    ref = m(x)
    fm = fused(m)
    out = fm(x)
    print([tuple(o.shape) for o in out], [float((a - b).abs().max()) for a, b in zip(ref, out)])
