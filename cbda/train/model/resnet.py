"""ResNet-18/50/101 backbones (v1.5: stride on the 3x3 conv) with dilation for output stride 8/16.

Parameter and buffer names follow torchvision's `resnet*` state dicts exactly (conv1, bn1,
layer1.0.conv1, layer1.0.downsample.0, ...), so its ImageNet checkpoint files load from a local
path. Only the classifier (`fc.*`) is dropped: a segmentation backbone has none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers, never trained).

    RIPU freezes every BatchNorm: with 2+2 images per step, batch statistics are too noisy."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision's BatchNorm2d checkpoints carry a counter we have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def norm_layer(frozen: bool) -> Callable[[int], nn.Module]:
    return FrozenBatchNorm2d if frozen else nn.BatchNorm2d


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)  # v1.5: stride here
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """Backbone returning (layer1 features at stride 4, layer4 features at `output_stride`).

    width: channels of the stem (64 in the published networks; smaller for tiny runs).
    output_stride 8 dilates layers 3 and 4 (2, 4); 16 dilates layer 4 (2); 32 none. Like
    torchvision, the first block of a dilated stage keeps the previous dilation."""

    def __init__(self, arch: str = "resnet101", output_stride: int = 8, frozen_bn: bool = True,
                 width: int = 64):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"model.backbone must be one of {sorted(ARCHS)}, got {arch!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"model.output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = ARCHS[arch]
        self._norm = norm_layer(frozen_bn)
        self._block = block
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = self._norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(width * 4, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(width * 8, layers[3], 2, dilate[2])
        self.low_channels = width * block.expansion
        self.out_channels = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        block, norm = self._block, self._norm
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                norm(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample, previous, norm)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, 1, None, self.dilation, norm) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def load_pretrained(backbone: ResNet, path: str | Path) -> None:
    """Load a torchvision-format ResNet checkpoint (a state dict, or a dict holding one under
    "state_dict"/"model") from a local file; `fc.*` is ignored, anything else must match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained: no checkpoint at {path}. Put torchvision's resnet file there "
            f"(nothing is downloaded at run time) or set model.pretrained=null for random init.")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"model.pretrained {path}: state dict does not match the backbone; "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
