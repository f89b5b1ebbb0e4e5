"""The user's segmentation network, with their constructor: no in_channels argument (RGB is assumed).

A small encoder-decoder: strided depthwise-separable stages (`embed_dims`, `depths`), an optional light
self-attention at the coarsest stage (`use_lmsa`, keys and values pooled by `sr_ratios[-1]`), skip connections,
per-pixel logits at the input size.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Stage(nn.Module):
    def __init__(self, cin, cout, depth, dropout):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        for _ in range(depth):
            layers += [nn.Conv2d(cout, cout, 3, padding=1, groups=cout), nn.Conv2d(cout, cout, 1),
                       nn.BatchNorm2d(cout), nn.GELU()]
        self.body, self.drop = nn.Sequential(*layers), nn.Dropout2d(dropout)

    def forward(self, x):
        return self.drop(self.body(x))


class LightAttention(nn.Module):
    def __init__(self, dim, sr_ratio):
        super().__init__()
        self.qkv, self.proj, self.sr = nn.Conv2d(dim, 3 * dim, 1), nn.Conv2d(dim, dim, 1), max(1, sr_ratio)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        if self.sr > 1:
            k, v = F.avg_pool2d(k, self.sr, ceil_mode=True), F.avg_pool2d(v, self.sr, ceil_mode=True)
        out = F.scaled_dot_product_attention(q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2),
                                             v.flatten(2).transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class MicroSegFormer(nn.Module):
    def __init__(self, num_classes=19, embed_dims=None, depths=None, sr_ratios=None, dropout=0.15, use_lmsa=True):
        super().__init__()
        dims, depths, sr = embed_dims or [16, 32, 64], depths or [1, 1, 1], sr_ratios or [4, 2, 1]
        self.stages = nn.ModuleList(Stage(cin, cout, d, dropout) for cin, cout, d in zip([3, *dims], dims, depths))
        self.attention = LightAttention(dims[-1], sr[-1]) if use_lmsa else nn.Identity()
        self.fuse = nn.ModuleList(nn.Conv2d(a + b, b, 3, padding=1) for a, b in zip(dims[1:], dims[:-1]))
        self.head = nn.Conv2d(dims[0], num_classes, 1)

    def forward(self, x):
        size, skips = x.shape[2:], []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = self.attention(x)
        for skip, fuse in zip(reversed(skips[:-1]), reversed(self.fuse)):
            x = F.gelu(fuse(torch.cat([F.interpolate(x, size=skip.shape[2:], mode="bilinear"), skip], 1)))
        return F.interpolate(self.head(x), size=size, mode="bilinear")
