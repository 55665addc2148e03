"""Rank 0 selects and broadcasts the labelling state: a 2-process gloo run on the CPU."""
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cbda
from cbda.train import distributed as du


def _state_with_round():
    state = cbda.ActiveLabelState(image_size=(12, 16), num_classes=4, num_images=3)
    logits = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    cbda.select(logits, budget=0.2, rounds=2, strategy="cbda", out_size=(12, 16), state=state)
    gt = np.random.default_rng(0).integers(0, 4, (3, 12, 16)).astype(np.uint8)
    state.label_from_ground_truth(lambda i: gt[i])
    return state


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        state = _state_with_round() if rank == 0 else None
        got = du.broadcast_state(state)
        maps = np.stack([got.label_map(i) for i in range(3)])
        np.save(f"{out_dir}/rank{rank}.npy", maps)
        conf = du.all_reduce_sum(torch.ones(2, 2, dtype=torch.int64) * (rank + 1))
        assert conf.tolist() == [[3, 3], [3, 3]]
    finally:
        dist.destroy_process_group()


def test_single_process_passthrough():
    state = _state_with_round()
    assert du.broadcast_state(state) is state and not du.is_distributed()
    again = du.state_from_bytes(du.state_to_bytes(state))
    assert all(np.array_equal(again.label_map(i), state.label_map(i)) for i in range(3))


def test_broadcast_state_two_ranks_gloo(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert np.array_equal(a, b) and (a != 255).any()
