"""A tiny U-Net: `depth` down/up levels of two 3x3 convs, skip connections, dropout at the bottleneck."""
import torch
from torch import nn


def conv_block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, in_channels=3, num_classes=4, base_channels=16, depth=2, dropout=0.1):
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip([in_channels, *chans[:-2]], chans[:-1]))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(conv_block(chans[-2], chans[-1]), nn.Dropout2d(dropout))
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in reversed(chans[1:]))
        self.up = nn.ModuleList(conv_block(c, c // 2) for c in reversed(chans[1:]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
