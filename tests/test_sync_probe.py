"""The sync probe itself: it must see the reads a driver makes, or its zero proves nothing."""

import torch

import cbda
from sync_probe import SyncProbe


def test_probe_counts_driver_reads_and_ignores_test_code():
    x = torch.randn(2, 5, 8, 8)
    with SyncProbe() as probe:
        torch.ones(3).sum().item()  # test code: not counted
        cbda.select(x, budget=0.05, strategy="cbda", backend="reference", image_ids=torch.arange(2), num_images=2)
    # the reference materialises and reads back on purpose: every one of its reads is seen
    assert probe.total >= 3
    assert all(site.startswith("reference.py:") for site in probe.sites)


def test_probe_restores_torch():
    before = torch.Tensor.item
    with SyncProbe():
        pass
    assert torch.Tensor.item is before
