"""Sharded acquisition on torch.distributed (gloo, CPU): every rank gets the single-process
selection, states stay identical, a failing rank makes every rank raise and nobody record.

One process group per world size is spawned once for the module; each worker runs every
scenario and writes its results, which the tests compare with single-process runs here.
"""

import hashlib
import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cbda
import cbda.distributed as cdist
from cbda import _native
from cbda.distributed import DistributedRoundError
from helpers import random_logits, tie_scores

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

N, C, LOW, SIZE = 7, 4, (6, 8), (12, 16)
STRATEGIES = ["image", "ra", "da", "cbra", "cbda"]
BACKENDS = ["reference", "cpu"] if _native.load("_cpu") is not None else ["reference"]
# uneven, unsorted shards; with three ranks the middle one is empty
SHARDS = {
    1: [list(range(N))],
    2: [[4, 0, 6, 2, 5], [1, 3]],
    3: [[5, 1], [], [0, 6, 3, 2, 4]],
}


def _logits():
    return random_logits(N, C, *LOW, seed=11)


def _gt():
    g = torch.randint(0, C, (N, *SIZE), generator=torch.Generator().manual_seed(12)).to(torch.uint8)
    g[:, :2, :3] = 255  # some void
    return g


def _tie_data():
    scores = tie_scores(N, *SIZE, seed=13, levels=3)  # few levels: ties across images and ranks
    labels = torch.randint(0, C, (N, *SIZE), generator=torch.Generator().manual_seed(14))
    return scores, labels


def _digest(sel):
    return {
        "picks": list(zip(sel.image_ids.tolist(), sel.ys.tolist(), sel.xs.tolist())),
        "scores": sel.scores.tolist(),
        "classes": sel.classes.tolist(),
        "weights": None if sel.class_weights is None else sel.class_weights.tolist(),
        "counts": None if sel.predicted_counts is None else sel.predicted_counts.tolist(),
    }


def _state_hash(st):
    return hashlib.sha256(st.to_bytes()).hexdigest()


# ---------------------------------------------------------------------------- scenarios
# Each runs on every rank (``ids``: this rank's images; a single process passes all of them
# with shard=False) and returns something picklable to compare.


def _multi_round(ids, strategy, backend, shard):
    logits, gt = _logits(), _gt()
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    out = []
    for _ in range(3):
        sel = cbda.select(logits[ids], image_ids=ids, budget=0.3, rounds=3, strategy=strategy, radius=1,
                          out_size=SIZE, state=st, backend=backend, shard=shard)
        st.label_from_ground_truth(lambda i: gt[i])
        out.append(_digest(sel))
    return out, _state_hash(st)


def _ties(ids, strategy, backend, shard):
    scores, labels = _tie_data()
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    sel = cbda.select(scores=scores[ids], pseudo_labels=labels[ids], image_ids=ids, budget=0.4, rounds=2,
                      strategy=strategy, radius=1, state=st, backend=backend, shard=shard)
    return _digest(sel)


def _streaming(ids, strategy, shard):
    logits = _logits()
    rnd = cbda.AcquisitionRound(budget=0.2, rounds=2, strategy=strategy, out_size=SIZE, num_images=N, shard=shard)
    try:
        for k in range(0, len(ids), 2):
            rnd.add(ids[k:k + 2], logits[ids[k:k + 2]])
    finally:
        sel = rnd.finish()
    return _digest(sel)


def _default_n(ids, shard):
    # no num_images, no state: N is the sum of the shard sizes
    return _digest(cbda.select(_logits()[ids], image_ids=ids, budget=0.2, rounds=2, strategy="cbda",
                               out_size=SIZE, shard=shard))


def _subset(ids, shard):
    # a deliberate subset: image 0 left out everywhere; K and class weights use N = 7
    ids = [i for i in ids if i != 0]
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    sel = cbda.select(_logits()[ids], image_ids=ids, budget=0.3, rounds=3, strategy="cbda", out_size=SIZE,
                      state=st, subset=True, shard=shard)
    return _digest(sel), _state_hash(st)


def _failing(rank, world, kind):
    """Run one round where one rank's input is bad; report what each rank raised and the state."""
    logits, gt = _logits(), _gt()
    ids = SHARDS[world][rank]
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    cbda.select(logits[ids], image_ids=ids, budget=0.3, rounds=3, strategy="cbda", out_size=SIZE, state=st, shard=True)
    st.label_from_ground_truth(lambda i: gt[i])
    before = _state_hash(st)
    bad = rank == world - 1
    kw = dict(budget=0.3, rounds=3, strategy="cbda", out_size=SIZE, state=st, shard=True)
    x = logits[ids]
    if kind == "nan" and bad:
        x = x.clone()
        x[..., 0, 0] = float("nan")
    if kind == "duplicate" and bad:
        ids = ids[:-1] + SHARDS[world][0][:1]  # an id of rank 0 again
    if kind == "budget" and bad:
        kw["budget"] = 0.5
    if kind == "early" and bad:
        kw["budget"] = 7.0  # raises in the constructor, before any collective of the round
    if kind == "partial" and bad:  # this rank's loader dropped an image: the union misses it
        ids = ids[:-1]
        x = logits[ids]
    if kind == "empty":  # no rank has an image
        ids = []
        x = logits[ids]
    try:
        if kind == "streaming":
            rnd = cbda.AcquisitionRound(budget=0.3, rounds=3, strategy="cbda", out_size=SIZE, state=st, shard=True)
            try:
                rnd.add(ids, x if not bad else x[:, :2])  # wrong number of classes on one rank
            finally:
                rnd.finish()
        else:
            cbda.select(x, image_ids=ids, **kw)
        raised = None
    except Exception as e:
        raised = (type(e).__name__, str(e), getattr(e, "ranks", None))
    return raised, before, _state_hash(st), st.num_rounds


def _shared_labels(rank, world, strategy):
    """Each rank holds the ground truth of its own shard only; labels are shared."""
    logits, gt = _logits(), _gt()
    ids = SHARDS[world][rank]
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    for _ in range(2):
        cbda.select(logits[ids], image_ids=ids, budget=0.3, rounds=3, strategy=strategy,
                    out_size=SIZE, state=st, shard=True)
        cdist.label_from_ground_truth(st, lambda i: gt[i] if i in ids else None)
    cbda.select(logits[ids], image_ids=ids, budget=0.3, rounds=3, strategy=strategy,
                out_size=SIZE, state=st, shard=True)
    first = int(st.selection(st.num_rounds).image_ids[0])
    try:  # nobody holds the ground truth of a picked image: every rank raises, nothing set
        cdist.label_from_ground_truth(st, lambda i: gt[i] if i in ids and i != first else None)
        raised = None
    except cbda.InputError as e:
        raised = str(e)
    return _state_hash(st), st.labels_pending(), raised, first


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ids = SHARDS[world][rank]
    res = {}
    try:
        for b in BACKENDS:
            for s in STRATEGIES:
                res["multi", s, b] = _multi_round(ids, s, b, True)
                res["ties", s, b] = _ties(ids, s, b, True)
        for s in ("image", "cbra", "cbda"):
            res["stream", s] = _streaming(ids, s, True)
        # the threshold search before the gather, forced on at these small sizes
        cdist.THRESHOLD_MIN_PICKS = 0
        cdist.reset_comm_stats()
        for s in ("da", "cbda"):
            res["multi_thr", s] = _multi_round(ids, s, BACKENDS[-1], True)
            res["ties_thr", s] = _ties(ids, s, BACKENDS[-1], True)
        res["thr_ops"] = sorted({op for op, _, _ in cdist.comm_stats().calls})
        cdist.THRESHOLD_MIN_PICKS = None
        res["plain_thr", "cbda"] = _ties(ids, "cbda", BACKENDS[-1], True)
        res["default_n"] = _default_n(ids, True)
        for s in ("image", "cbda"):
            res["labels", s] = _shared_labels(rank, world, s)
        res["subset"] = _subset(ids, True)
        for kind in ("nan", "duplicate", "budget", "early", "streaming", "partial", "empty"):
            res["fail", kind] = _failing(rank, world, kind)
        # the group still works after all that: one more good round
        res["after"] = _default_n(ids, True)
    except Exception:
        res["crash"] = traceback.format_exc()
    torch.save(res, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    # gloo's teardown sometimes aborts ("terminate called without an active exception") after
    # everything is done; the results are on disk, so leave without running destructors
    os._exit(0)


_RUNS = {}


def _run(world):
    if world not in _RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
            _RUNS[world] = [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world)]
    for r, res in enumerate(_RUNS[world]):  # on every call: a crash fails every test of that world
        assert "crash" not in res, f"rank {r} crashed:\n{res.get('crash')}"
    return _RUNS[world]


ALL = list(range(N))
WORLDS = [2, 3]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_distributed_rounds_equal_single_process(world, strategy, backend):
    runs = _run(world)
    # the same backend in one process (the cpu backend's scores may differ from the
    # reference's in the last float bit, which can reorder near-ties)
    want, want_state = _multi_round(ALL, strategy, backend, False)
    for r in range(world):
        got, got_state = runs[r]["multi", strategy, backend]
        assert got == want, f"rank {r}"
        assert got_state == want_state, f"rank {r}: state differs from the single-process state"
    assert any(len(rd["picks"]) for rd in want)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_distributed_ties_across_ranks(world, strategy):
    runs = _run(world)
    want = _ties(ALL, strategy, "reference", False)
    for r in range(world):
        for b in BACKENDS:
            assert runs[r]["ties", strategy, b] == want, f"rank {r}, backend {b}"
    if strategy in ("da", "cbda"):  # the cut falls inside a run of equal scores
        scores = want["scores"]
        assert len(scores) > len(set(scores))


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("strategy", ["da", "cbda"])
def test_distributed_threshold_search_is_exact(world, strategy):
    runs = _run(world)
    want_multi = _multi_round(ALL, strategy, BACKENDS[-1], False)
    want_ties = _ties(ALL, strategy, "reference", False)
    for r in range(world):
        assert runs[r]["multi_thr", strategy] == want_multi, f"rank {r}"
        assert runs[r]["ties_thr", strategy] == want_ties, f"rank {r}"
        assert "all_reduce score histogram" in runs[r]["thr_ops"]
    assert all(runs[r]["plain_thr", "cbda"] == _ties(ALL, "cbda", "reference", False) for r in range(world))


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("strategy", ["image", "cbra", "cbda"])
def test_distributed_streaming_round(world, strategy):
    runs = _run(world)
    want = _streaming(ALL, strategy, False)
    assert all(runs[r]["stream", strategy] == want for r in range(world))


@pytest.mark.parametrize("world", WORLDS)
def test_distributed_num_images_is_sum_of_shards(world):
    runs = _run(world)
    want = _default_n(ALL, False)
    assert all(runs[r]["default_n"] == want and runs[r]["after"] == want for r in range(world))


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("kind,error,needle", [
    ("nan", "DistributedRoundError", "logits"),
    ("duplicate", "InputError", "image_ids"),
    ("budget", "InputError", "budget"),
    ("early", "DistributedRoundError", "budget"),
    ("streaming", "DistributedRoundError", "logits"),
    ("partial", "InputError", "of the 7 images"),
    ("empty", "InputError", "received no image"),
])
def test_distributed_failure_raises_everywhere_and_records_nothing(world, kind, error, needle):
    runs = _run(world)
    bad = world - 1
    for r in range(world):
        raised, before, after, rounds = runs[r]["fail", kind]
        assert raised is not None, f"rank {r} did not raise"
        name, msg, ranks = raised
        assert name == error and needle in msg, (r, raised)
        if error == "DistributedRoundError":
            assert ranks == [bad] and f"rank {bad}" in msg or r == bad and "this rank" in msg
        assert before == after and rounds == 1, f"rank {r}: the state changed"


@pytest.mark.parametrize("world", WORLDS)
def test_distributed_subset_equals_single_process_subset(world):
    runs = _run(world)
    want = _subset(ALL, False)
    assert want[0]["picks"] and all(p[0] != 0 for p in want[0]["picks"])
    assert all(runs[r]["subset"] == want for r in range(world))


def _single_labels(strategy):
    logits, gt = _logits(), _gt()
    st = cbda.ActiveLabelState(SIZE, C, num_images=N)
    for _ in range(2):
        cbda.select(logits, budget=0.3, rounds=3, strategy=strategy, out_size=SIZE, state=st)
        st.label_from_ground_truth(lambda i: gt[i])
    cbda.select(logits, budget=0.3, rounds=3, strategy=strategy, out_size=SIZE, state=st)
    return st


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("strategy", ["image", "cbda"])
def test_distributed_labels_shared_from_shard_ground_truth(world, strategy):
    runs = _run(world)
    want = _state_hash(_single_labels(strategy))
    for r in range(world):
        got, pending, raised, first = runs[r]["labels", strategy]
        assert got == want and pending, f"rank {r}"
        assert raised is not None and f"[{first}]" in raised and "lookup" in raised


def test_distributed_needs_initialised_group():
    with pytest.raises(cbda.InputError, match="process_group"):
        cbda.select(_logits(), budget=0.2, out_size=SIZE, shard=True)


def test_distributed_error_type():
    assert issubclass(DistributedRoundError, cbda.CbdaError)
