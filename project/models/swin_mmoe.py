"""SwinMMoE: a Swin-Transformer-V2 encoder shared by several classification tasks through a multi-gate mixture
of experts (MMoE), with a clinical-prior branch for a tabular vector, and a SimMIM reconstruction decoder for
masked-image pretraining (dropped before fine-tuning).

Built from torchvision's Swin-V2 blocks (SwinTransformerBlockV2, PatchMergingV2), channels-last like
torchvision's swin_v2_*; no pretrained weights.
"""
import torch
from torch import nn
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2
from torchvision.ops.misc import Permute


class SwinMMoE(nn.Module):
    def __init__(self, in_channels=3, img_size=64, patch_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4),
                 window_size=4, mlp_ratio=2.0, num_experts=4, expert_dim=64, tabular_dim=8, prior_dim=16,
                 tasks=None, dropout=0.1):
        super().__init__()
        tasks = dict(tasks or {"diagnosis": 3, "change": 3})
        self.grid = img_size // patch_size
        self.patch_embed = nn.Sequential(nn.Conv2d(in_channels, embed_dim, patch_size, patch_size),
                                         Permute([0, 2, 3, 1]), nn.LayerNorm(embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))  # stands in for hidden patches (SimMIM)
        stages, dim = [], embed_dim
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            # alternate plain and shifted windows, as in Swin
            blocks = [SwinTransformerBlockV2(dim, heads, [window_size] * 2, [0 if j % 2 == 0 else window_size // 2] * 2,
                                             mlp_ratio, dropout=dropout, attention_dropout=dropout)
                      for j in range(depth)]
            if i < len(depths) - 1:
                blocks.append(PatchMergingV2(dim))
                dim *= 2
            stages.append(nn.Sequential(*blocks))
        self.encoder = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.stride = patch_size * 2 ** (len(depths) - 1)  # input pixels per final feature cell

        self.prior = nn.Sequential(nn.Linear(tabular_dim, prior_dim), nn.GELU(), nn.Linear(prior_dim, prior_dim))
        fused = dim + prior_dim
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(fused, expert_dim), nn.GELU(), nn.Dropout(dropout))
                                     for _ in range(num_experts))
        self.gates = nn.ModuleDict({task: nn.Linear(fused, num_experts) for task in tasks})
        self.heads = nn.ModuleDict({task: nn.Sequential(nn.Dropout(dropout), nn.Linear(expert_dim, n))
                                    for task, n in tasks.items()})
        # SimMIM's light decoder: one 1x1 conv to stride^2 * channels, then pixel shuffle back to the image
        self.decoder = nn.Sequential(nn.Conv2d(dim, self.stride ** 2 * in_channels, 1), nn.PixelShuffle(self.stride))

    def mask_grid(self) -> tuple[int, int]:
        return self.grid, self.grid

    def features(self, images, mask=None):
        x = self.patch_embed(images)  # (B, H/p, W/p, C)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        return self.norm(self.encoder(x))  # (B, h, w, dim)

    def forward(self, images, tabular) -> dict:
        pooled = self.features(images).mean(dim=(1, 2))
        fused = torch.cat([pooled, self.prior(tabular)], dim=1)
        experts = torch.stack([expert(fused) for expert in self.experts], dim=1)  # (B, experts, expert_dim)
        out = {}
        for task, head in self.heads.items():
            weights = self.gates[task](fused).softmax(dim=-1).unsqueeze(-1)  # each task mixes the experts its way
            out[task] = head((weights * experts).sum(dim=1))
        return out

    def reconstruct(self, images, mask):
        """Reconstruct the images from the visible patches; `mask` (B, H/p, W/p) is True where hidden."""
        return self.decoder(self.features(images, mask).permute(0, 3, 1, 2))
