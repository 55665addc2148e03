"""Backend batches: the round joins and splits the caller's batches (cbda.api.batching)."""

import numpy as np
import pytest
import torch

import cbda
from cbda import _native
from cbda.api import batching
from cbda.errors import InputError
from helpers import random_logits

needs_cpu = pytest.mark.skipif(_native.load("_cpu") is None, reason="cbda._cpu not built")
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu)]


def _picks(sel):
    return list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist(), sel.classes.tolist()))


def _gt(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, c, (n, h, w)).astype(np.uint8)


def test_rebatcher_joins_and_splits_in_order():
    rb = batching.Rebatcher(3)
    x = torch.arange(8, dtype=torch.float32).reshape(8, 1, 1, 1)
    ids = torch.arange(8) + 100
    out = rb.push(ids[:2], x[:2])
    assert out == []
    out = rb.push(ids[2:7], x[2:7])  # completes one batch of 3 and one more of 3, holds 1
    assert [o[0].tolist() for o in out] == [[100, 101, 102], [103, 104, 105]]
    assert [o[1].flatten().tolist() for o in out] == [[0, 1, 2], [3, 4, 5]]
    out = rb.flush()
    assert [o[0].tolist() for o in out] == [[106]]
    assert rb.flush() == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", ["ra", "da", "cbra", "cbda", "image"])
def test_picks_do_not_depend_on_the_batch_size(backend, strategy):
    n, c, h, w = 7, 4, 12, 10
    logits = random_logits(n, c, 6, 5, seed=3)
    gt = _gt(n, h, w, c)
    order = [4, 1, 6, 0, 3, 2, 5]
    runs = {}
    for bs in (None, 1, 2, 5, 64):
        state = cbda.ActiveLabelState((h, w), c, num_images=n)
        sels = []
        for _ in range(2):  # round 2 sees the priors of round 1
            batches = [(order[i:i + 3], logits[order[i:i + 3]]) for i in range(0, n, 3)]
            sel = cbda.select(iter(batches), budget=0.4, rounds=4, strategy=strategy, out_size=(h, w),
                              state=state, backend=backend, batch_size=bs)
            state.label_from_ground_truth(lambda i: gt[i])
            sels.append(_picks(sel))
        runs[bs] = sels
    for bs, sels in runs.items():
        assert sels == runs[None], f"batch_size={bs}"


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4", True])
def test_batch_size_is_validated(bad):
    with pytest.raises(InputError, match="batch_size"):
        cbda.AcquisitionRound(budget=0.1, num_images=2, batch_size=bad)


def test_auto_batch_size_is_none_off_gpu():
    assert batching.auto_batch_size(torch.device("cpu"), 10**6) is None


def test_auto_batch_size_from_free_memory(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (40 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 1 * gib)
    dev = torch.device("cuda", 0)
    # a Cityscapes image: bf16 stride-4 logits (5 MB) + 40 B per output pixel (84 MB)
    per = batching.bytes_per_image(19, (256, 512), (1024, 2048), 2, maps=False)
    assert per == 19 * 256 * 512 * 2 + 40 * 1024 * 2048
    assert batching.auto_batch_size(dev, per) == batching.EXTRA_BYTES // per  # capped by EXTRA_BYTES
    # little free memory: half of (free + cached unused) decides
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (300 * 2**20, 80 * gib))
    assert batching.auto_batch_size(dev, per) == (300 * 2**20 + gib) // 2 // per
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (0, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 0)
    assert batching.auto_batch_size(dev, per) == 1  # never zero
    assert batching.auto_batch_size(dev, 1) == 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (80 * gib, 80 * gib))
    assert batching.auto_batch_size(dev, 1000) == batching.MAX_BATCH


def test_training_config_passes_the_select_batch_size(monkeypatch):
    from cbda.train import acquisition

    seen = {}

    def fake_select(*args, **kwargs):
        seen.update(kwargs)
        for _ in args[0]:
            pass
        return None

    monkeypatch.setattr(acquisition.cbda, "select", fake_select)
    model = torch.nn.Conv2d(3, 2, 1)
    loader = [{"image": torch.zeros(1, 3, 4, 4), "index": [0]}]
    active = {"budget": 0.1, "rounds": 2, "strategy": "ra", "select_batch_size": 16}
    acquisition.run_round(model, loader, None, 1, active, (4, 4), 1, None, lambda x: x)
    assert seen["batch_size"] == 16
    active.pop("select_batch_size")
    acquisition.run_round(model, loader, None, 1, active, (4, 4), 1, None, lambda x: x)
    assert seen["batch_size"] is None
