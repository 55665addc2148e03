"""GPU dispatch without a GPU (issue 13): CUDA's driver compatibility rule, ``auto`` falling
through past a backend that cannot run or that fails the first-use self-check, and
``python -m cbda.info --check``."""

from __future__ import annotations

import warnings

import pytest
import torch

import cbda
from cbda.api import dispatch, selfcheck
from cbda.backends import cpu as cpu_backend
from cbda.backends import cuda as cuda_backend
from cbda.backends.base import Picks


# -- the driver rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("driver,runtime,ok", [
    (13000, 13000, True),
    (13000, 13020, True),   # minor-version compatibility: a 13.0 driver runs a 13.2 build
    (13020, 13000, True),
    (14000, 13000, True),   # newer major driver, older build
    (12080, 13000, False),  # older major: refused
    (12090, 13020, False),
    (0, 13000, False),      # no driver
    (13000, 0, False),
])
def test_driver_rule_is_cudas(driver, runtime, ok):
    problem = cuda_backend.driver_problem(driver, runtime)
    assert (problem is None) == ok
    if driver and runtime and not ok:
        assert "12." in problem and "13." in problem  # both versions named


class _FakeModule:
    MAX_FUSED_RADIUS = 2

    def __init__(self, driver, runtime):
        self.v = (driver, runtime)

    def versions(self):
        return self.v


def test_old_driver_is_a_clear_reason_and_auto_falls_through(monkeypatch):
    monkeypatch.setattr(cuda_backend._native, "load", lambda name: _FakeModule(12040, 13000) if name == "_cuda" else None)
    why = cuda_backend.not_supported_reasons(torch.device("cuda", 0), torch.float32)
    assert len(why) == 1 and "CUDA 12.4" in why[0] and "CUDA 13.0" in why[0] and "driver" in why[0]
    # auto on a CUDA device: triton refused (say), cuda refused for the driver -> reference
    monkeypatch.setattr(dispatch, "_AUTO", {"cuda": ("cuda", "triton", "reference")})
    monkeypatch.setattr(dispatch, "self_check_enabled", lambda: False)
    monkeypatch.setattr("cbda.backends.triton.not_supported_reasons", lambda d, t: ["no triton here"])
    assert dispatch.resolve("auto", torch.device("cuda", 0)).NAME == "reference"
    with pytest.raises(cbda.errors.BackendUnavailableError, match="CUDA 12.4"):
        dispatch.resolve("cuda", torch.device("cuda", 0))


def test_minor_version_newer_build_is_accepted(monkeypatch):
    monkeypatch.setattr(cuda_backend._native, "load", lambda name: _FakeModule(13000, 13020) if name == "_cuda" else None)
    assert cuda_backend.not_supported_reasons(torch.device("cuda", 0), torch.float32) == []


# -- the first-use self-check -------------------------------------------------------------------

@pytest.fixture
def cpu_checked(monkeypatch):
    """Make ``auto`` self-check the cpu backend (as it does GPU backends) with a fresh cache."""
    monkeypatch.setattr(dispatch, "SELF_CHECK_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(dispatch, "_checked", {})
    monkeypatch.delenv("CBDA_SELF_CHECK", raising=False)
    if cpu_backend.not_supported_reasons(torch.device("cpu"), torch.float32):
        pytest.skip("cbda._cpu not built")


def _break_cpu(monkeypatch):
    real_score = cpu_backend.score

    def wrong_score(logits, spec, image_ids):
        s, lab = real_score(logits, spec, image_ids)
        return s * 1.01, lab  # a plausible-looking wrong kernel

    monkeypatch.setattr(cpu_backend, "score", wrong_score)


def test_correct_backend_passes_and_is_checked_once(cpu_checked, monkeypatch):
    calls = []
    real = selfcheck.check_backend
    monkeypatch.setattr(selfcheck, "check_backend", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = torch.randn(1, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            assert dispatch.resolve("auto", x.device, x.dtype).NAME == "cpu"
    assert len(calls) == 1


def test_mini_check_is_small():
    res = selfcheck.check_backend("reference", torch.device("cpu"), torch.float32, mini=True)
    assert res.ok and res.cases <= 8


def test_broken_backend_warns_once_and_auto_falls_back(cpu_checked, monkeypatch):
    _break_cpu(monkeypatch)
    x = torch.randn(2, 3, 5, 6)
    with pytest.warns(RuntimeWarning, match="'cpu' disagrees with the reference"):
        assert dispatch.resolve("auto", x.device, x.dtype).NAME == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning in this process
        assert dispatch.resolve("auto", x.device, x.dtype).NAME == "reference"
        # the public API follows the fallback and still gives the reference's answer
        a = cbda.select(x, budget=0.2, strategy="da", num_images=2)
    r = cbda.select(x, budget=0.2, strategy="da", num_images=2, backend="reference")
    assert torch.equal(a.image_ids, r.image_ids) and torch.equal(a.ys, r.ys) and torch.equal(a.xs, r.xs)
    # a backend named explicitly is not second-guessed
    assert dispatch.resolve("cpu", x.device, x.dtype).NAME == "cpu"


def test_broken_selection_is_caught_too(cpu_checked, monkeypatch):
    real_open = cpu_backend.open_round

    class Reversed:
        def __init__(self, plan):
            self.inner = real_open(plan)

        def add(self, *a, **k):
            self.inner.add(*a, **k)

        def finish(self):
            p = self.inner.finish()
            f = lambda t: t.flip(0)  # noqa: E731  right set, wrong order
            return Picks(f(p.image_ids), f(p.ys), f(p.xs), f(p.scores), f(p.classes), p.predicted_counts)

    monkeypatch.setattr(cpu_backend, "open_round", Reversed)
    with pytest.warns(RuntimeWarning, match="picks differ|pick scores differ"):
        assert dispatch.resolve("auto", torch.device("cpu")).NAME == "reference"


def test_self_check_off_switch(cpu_checked, monkeypatch):
    _break_cpu(monkeypatch)
    monkeypatch.setenv("CBDA_SELF_CHECK", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.resolve("auto", torch.device("cpu")).NAME == "cpu"


def test_self_check_only_guards_gpu_backends_by_default(monkeypatch):
    assert dispatch.SELF_CHECK_DEVICE_TYPES == ("cuda",)
    monkeypatch.setattr(dispatch, "_checked", {})
    _break_cpu(monkeypatch)
    if cpu_backend.not_supported_reasons(torch.device("cpu"), torch.float32):
        pytest.skip("cbda._cpu not built")
    assert dispatch.resolve("auto", torch.device("cpu")).NAME == "cpu"  # CPU: tested in CI instead


# -- python -m cbda.info --check ---------------------------------------------------------------------

def test_info_check_passes_here(capsys):
    from cbda import info

    assert info.main(["--check"]) == 0
    out = capsys.readouterr().out
    if not cpu_backend.not_supported_reasons(torch.device("cpu"), torch.float32):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("cpu ") and "max score error" in ln)
        assert " ok " in line and "picks equal" in line
    assert "all backends agree" in out or "no backend other than the reference" in out


def test_info_check_exits_1_on_a_mismatch(capsys, monkeypatch):
    from cbda import info

    if cpu_backend.not_supported_reasons(torch.device("cpu"), torch.float32):
        pytest.skip("cbda._cpu not built")
    _break_cpu(monkeypatch)
    assert info.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "max score error" in out
