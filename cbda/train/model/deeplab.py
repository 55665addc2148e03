"""DeepLab-v3+ head on a ResNet backbone, as configured in RIPU (see ripu-protocol.md).

ASPP on layer4 (1x1, three depthwise-separable 3x3 at dilations 6/12/18, image pooling) ->
3x3 conv -> upsample to layer1 size; 1x1 shortcut from layer1 (-> 48); concat -> two
depthwise-separable 3x3 convs -> Dropout2d -> 1x1 classifier. The output logits stay at
stride 4: the trainer upsamples them to label size for the losses, and acquisition hands them
low-resolution to cbda.select, whose kernels upsample them on the fly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNet, load_pretrained, norm_layer


def _conv_bn_relu(cin, cout, k, norm, dilation=1, groups=1):
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups, bias=False),
                         norm(cout), nn.ReLU(inplace=True))


def _separable(cin, cout, norm, dilation=1):
    # depthwise 3x3 (dilated) then pointwise 1x1, each with norm + ReLU
    return nn.Sequential(_conv_bn_relu(cin, cin, 3, norm, dilation, groups=cin),
                         _conv_bn_relu(cin, cout, 1, norm))


class ASPP(nn.Module):
    def __init__(self, cin, channels, dilations, norm):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, channels, 1, norm)] +
                                      [_separable(cin, channels, norm, d) for d in dilations])
        self.pool = _conv_bn_relu(cin, channels, 1, norm)
        self.project = _conv_bn_relu(channels * (len(dilations) + 2), channels, 3, norm)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3Plus(nn.Module):
    """forward(images (B, 3, H, W) float, normalised) -> logits (B, C, ceil(H/4), ceil(W/4)).

    Parameters are grouped by `param_groups()` into backbone and head (RIPU: 10x LR for the head).
    """

    def __init__(self, num_classes: int = 19, backbone: str = "resnet101", output_stride: int = 8,
                 frozen_bn: bool = True, width: int = 64, head_channels: int = 512,
                 low_channels: int = 48, aspp_dilations=(6, 12, 18), dropout: float = 0.1,
                 pretrained: str | None = None):
        super().__init__()
        self.backbone = ResNet(backbone, output_stride, frozen_bn, width)
        if pretrained:
            load_pretrained(self.backbone, pretrained)
        norm = norm_layer(frozen_bn)
        self.aspp = ASPP(self.backbone.out_channels, head_channels, tuple(aspp_dilations), norm)
        self.shortcut = _conv_bn_relu(self.backbone.low_channels, low_channels, 1, norm)
        self.decoder = nn.Sequential(_separable(head_channels + low_channels, head_channels, norm),
                                     _separable(head_channels, head_channels, norm))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=True)
        feat = self.decoder(torch.cat([high, self.shortcut(low)], 1))
        return self.classifier(self.dropout(feat))

    def param_groups(self):
        """(backbone parameters, head parameters), trainable ones only."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in bb}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return bb, head


def build_model(cfg: dict, num_classes: int) -> DeepLabV3Plus:
    """Build the segmentation network from the `model` section of a config."""
    m = cfg
    return DeepLabV3Plus(num_classes=num_classes, backbone=m.get("backbone", "resnet101"),
                         output_stride=int(m.get("output_stride", 8)),
                         frozen_bn=bool(m.get("frozen_bn", True)), width=int(m.get("width", 64)),
                         head_channels=int(m.get("head_channels", 512)),
                         low_channels=int(m.get("low_channels", 48)),
                         aspp_dilations=tuple(m.get("aspp_dilations", (6, 12, 18))),
                         dropout=float(m.get("dropout", 0.1)), pretrained=m.get("pretrained"))
