import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # GPU cases carry the marker and skip themselves; nothing queries the GPU at import.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
