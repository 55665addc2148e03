"""The training driver under torchrun: every rank scores its shard and cbda.select(shard=True)
merges them, giving the same picks as a single process."""
import os
import subprocess
import sys
from pathlib import Path

import torch

import cbda
from cbda.train.config import load_config
from cbda.train.trainer import train


def test_distributed_acquisition_in_trainer_equals_single_process(tiny_data, tiny_overrides, tmp_path):
    # the round runs at iteration 0, before any (world-size dependent) training step, so the
    # model is the same seeded initialisation in both runs (DDP broadcasts rank 0's weights)
    # model is the same seeded initialisation in both runs (DDP broadcasts rank 0's weights).
    # One image per batch and one thread everywhere: convolution results may differ in the
    # last bit with the batch composition or the thread count, which would reorder near-ties.
    ov = tiny_overrides(tiny_data, "gtav", **{"active.schedule": "[0]", "active.rounds": 1,
                                               "train.iters": 1, "active.strategy": "cbda",
                                               "active.batch_size": 1})
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("demo", ov), single, progress=False, quiet=True)
    finally:
        torch.set_num_threads(threads)

    multi = tmp_path / "multi"
    env = dict(os.environ, PYTHONPATH=str(Path(cbda.__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cbda.train", "train", "--config", "demo", "--work-dir", str(multi), "--no-progress", *ov]
    # outside the repository, so that `-m` imports the cbda under test, not the source tree
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    a = cbda.ActiveLabelState.load(single / "active_state.pt").picks()
    b = cbda.ActiveLabelState.load(multi / "active_state.pt").picks()
    assert len(a["image_ids"]) > 0
    for key in ("image_ids", "ys", "xs"):
        assert torch.equal(a[key], b[key]), key
