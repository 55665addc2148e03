"""Datasets in their published layouts, label maps, samplers and the built-in generated dataset."""
from .base import DatasetNotFoundError
from .cityscapes import Cityscapes
from .gtav import GTAV
from .synthia import Synthia

__all__ = ["Cityscapes", "DatasetNotFoundError", "GTAV", "Synthia"]
