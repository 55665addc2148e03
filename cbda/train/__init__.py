"""Training driver reproducing the CBDA / RIPU experiments on top of the public cbda API:
datasets (Cityscapes, GTAV, SYNTHIA, the built-in generated scenes), DeepLab-v3+, RIPU's losses
and schedule, evaluation, reports and the `cbda` command line. Needs the `train` extra
(pillow, pyyaml, tqdm, tensorboard, matplotlib)."""
from .config import load_config

__all__ = ["load_config"]
