"""MicroSegFormer: a small SegFormer (Xie et al., 2021).

Hierarchical encoder of overlapping patch embeddings and transformer blocks whose attention shrinks keys and
values by `sr_ratio` (so cost stays linear-ish in pixels), Mix-FFN with a depthwise conv instead of position
embeddings, and a decoder that is only MLPs: project every stage to `decoder_dim`, upsample, fuse, classify.
"""
import torch
import torch.nn.functional as F
from torch import nn


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_ch, dim, kernel, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    def __init__(self, dim, heads, sr_ratio, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio) if sr_ratio > 1 else None
        self.sr_norm = nn.LayerNorm(dim) if sr_ratio > 1 else None

    def forward(self, x, h, w):
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr is not None:  # attend to a downsampled grid of keys/values
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.sr_norm(x)
        k, v = self.kv(x).view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class MixFFN(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, h, w):
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class Block(nn.Module):
    def __init__(self, dim, heads, sr_ratio, mlp_ratio, dropout):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr_ratio, dropout)
        self.ffn = MixFFN(dim, dim * mlp_ratio, dropout)

    def forward(self, x, h, w):
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class Stage(nn.Module):
    def __init__(self, in_ch, dim, depth, heads, sr_ratio, mlp_ratio, dropout, first):
        super().__init__()
        self.embed = OverlapPatchEmbed(in_ch, dim, kernel=7 if first else 3, stride=4 if first else 2)
        self.blocks = nn.ModuleList(Block(dim, heads, sr_ratio, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x, h, w = self.embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MicroSegFormer(nn.Module):
    def __init__(self, in_channels=3, num_classes=4, embed_dims=(24, 48, 96), depths=(1, 1, 2),
                 num_heads=(1, 2, 4), sr_ratios=(4, 2, 1), mlp_ratio=2, decoder_dim=64, dropout=0.1):
        super().__init__()
        dims = [in_channels, *embed_dims]
        self.encoder = nn.ModuleList(
            Stage(dims[i], dims[i + 1], depths[i], num_heads[i], sr_ratios[i], mlp_ratio, dropout, first=i == 0)
            for i in range(len(embed_dims))
        )
        self.decoder = nn.ModuleDict({
            "project": nn.ModuleList(nn.Conv2d(d, decoder_dim, 1) for d in embed_dims),  # 1x1 conv == per-pixel MLP
            "fuse": nn.Sequential(nn.Conv2d(decoder_dim * len(embed_dims), decoder_dim, 1, bias=False),
                                  nn.BatchNorm2d(decoder_dim), nn.GELU()),
            "drop": nn.Dropout(dropout),
            "classify": nn.Conv2d(decoder_dim, num_classes, 1),
        })

    def forward(self, x):
        size = x.shape[2:]
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        top = feats[0].shape[2:]
        up = [F.interpolate(p(f), size=top, mode="bilinear", align_corners=False) if i else p(f)
              for i, (p, f) in enumerate(zip(self.decoder["project"], feats))]
        x = self.decoder["drop"](self.decoder["fuse"](torch.cat(up, dim=1)))
        return F.interpolate(self.decoder["classify"](x), size=size, mode="bilinear", align_corners=False)
