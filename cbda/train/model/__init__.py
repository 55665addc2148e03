"""Segmentation network: DeepLab-v3+ on torchvision-compatible ResNets."""
from .deeplab import DeepLabV3Plus, build_model
from .resnet import FrozenBatchNorm2d, ResNet, load_pretrained

__all__ = ["DeepLabV3Plus", "FrozenBatchNorm2d", "ResNet", "build_model", "load_pretrained"]
