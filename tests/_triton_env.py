"""Shared set-up of the triton tests.

Without CUDA the kernels run through the Triton interpreter, which triton picks when the
kernels are defined, i.e. when ``cbda.triton`` is imported; so ``TRITON_INTERPRET=1`` is set
around that import and, through the autouse fixture ``interpret``, during these tests only.
The rest of the suite keeps seeing a machine where the triton backend refuses CPU tensors.
"""

import importlib
import os

import pytest
import torch

_WANT = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") is None
if _WANT:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    for _m in ("cbda.triton.score", "cbda.triton.greedy", "cbda.triton.topk", "cbda.triton.window"):
        importlib.import_module(_m)
finally:
    if _WANT:
        del os.environ["TRITON_INTERPRET"]

INTERPRET = _WANT or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


# the CPU case runs only through the interpreter; the CUDA case only on a GPU
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
