"""Backend dispatch explains itself: auto skips quietly, a named backend raises with reasons."""

import pytest
import torch

from cbda import _native
from cbda.api import dispatch
from cbda.errors import BackendUnavailableError, InputError


def test_auto_orders():
    assert dispatch.auto_order(torch.device("cpu")) == ("cpu", "reference")
    assert dispatch.auto_order(torch.device("cuda")) == ("triton", "cuda", "reference")


def test_auto_on_cpu_picks_the_native_module_when_built():
    mod = dispatch.resolve("auto", torch.device("cpu"), torch.float32)
    assert mod.NAME == ("cpu" if _native.load("_cpu") is not None else "reference")


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="backend"):
        dispatch.resolve("fastest", torch.device("cpu"))


def test_named_backend_that_cannot_run_says_why():
    with pytest.raises(BackendUnavailableError, match="cuda.*cpu"):
        dispatch.resolve("cuda", torch.device("cpu"), torch.float32)


def test_explain_lists_every_backend():
    rows = dict(dispatch.explain(torch.device("cpu")))
    assert set(rows) == {"reference", "cpu", "triton", "cuda"}
    assert rows["reference"] == []
    assert rows["cuda"] and all(isinstance(r, str) for r in rows["cuda"])


def test_unsupported_dtype_is_explained():
    if _native.load("_cpu") is None:
        pytest.skip("cbda._cpu not built")
    with pytest.raises(BackendUnavailableError, match="dtype"):
        dispatch.resolve("cpu", torch.device("cpu"), torch.float64)
