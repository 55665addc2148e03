"""`cbda compare` on a tiny generated dataset: 2 strategies, 1 seed, a few iterations, 5 rounds.

One module-scoped sweep feeds most tests: its outputs, its progress bar, fork exactness (a fork
equals a straight run of the same config, which also shows the numbers repeat run after run),
--resume, and the refusals that must happen before any work.
"""
import json

import pytest

from cbda.train.cli import main
from cbda.train.compare import CompareError, parse_budgets, parse_seeds, parse_strategies, sweep
from cbda.train.compare_report import build_summary, render_markdown
from cbda.train.config import load_config
from cbda.train.errors import ConfigError
from cbda.train.trainer import train

TINY = [
    "data.generate.size=[32, 64]", "data.generate.num_source=10", "data.generate.num_train=6",
    "data.generate.num_val=4", "data.source_size=[32, 64]", "data.target_size=[32, 64]",
    "data.eval_size=[32, 64]", "model.width=8", "model.head_channels=16", "model.low_channels=8",
    "train.iters=7", "train.poly_iters=7", "train.log_every=2", "active.schedule=[2, 3, 4, 5, 6]",
    "eval.batch_size=4",
]
ITERS, FIRST = 7, 2


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    import io
    from contextlib import redirect_stderr
    work = tmp_path_factory.mktemp("compare") / "sweep"
    err = io.StringIO()
    with redirect_stderr(err):
        summary = sweep("compare", "ra,cbda", "0", "0.1", work, overrides=TINY, threads=1, progress=True)
    return work, summary, err.getvalue()


def _run(summary, kind, strategy=None):
    return next(r for r in summary["runs"] if r["kind"] == kind and r["strategy"] == strategy)


def test_outputs(tiny_sweep):
    work, s, _ = tiny_sweep
    saved = json.loads((work / "compare.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(s["runs"]))
    assert {(r["kind"], r["strategy"]) for r in saved["runs"]} == {
        ("adapt", "ra"), ("adapt", "cbda"), ("source_only", None), ("supervised", None)}
    for r in saved["runs"]:
        assert r["finished"] and r["seconds"] > 0 and len(r["per_class_iou"]) == 19
        assert r["miou"] is not None and r["min_iou"] <= r["miou"]
    for strategy in ("ra", "cbda"):
        rounds = _run(saved, "adapt", strategy)["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
        assert [r["iteration"] for r in rounds] == [2, 3, 4, 5, 6]
        assert all(0 <= r["imbalance_score"] <= 1 and sum(r["class_histogram"].values()) > 0 for r in rounds)
        counts = [sum(r["class_histogram"].values()) for r in rounds]
        assert counts == sorted(counts) and counts[0] < counts[-1]  # cumulative histograms
    assert _run(saved, "source_only")["rounds"] == [] and _run(saved, "supervised")["rounds"] == []
    assert saved["machine"]["threads"] == 1 and saved["machine"]["torch"]
    cbda_row = next(r for r in saved["summary"] if r["strategy"] == "cbda")
    assert cbda_row["miou_gain"] == pytest.approx(_run(saved, "adapt", "cbda")["miou"] - _run(saved, "adapt", "ra")["miou"])
    md = (work / "compare.md").read_text()
    for text in ("| 10 % | cbda | 1 |", "| 10 % | ra | 1 |", "| - | source only |", "| - | fully supervised |",
                 "round 5", "Machine:", "fully supervised"):
        assert text in md, text
    for png in ("imbalance.png", "iou_gain.png", "class_distribution.png"):
        assert (work / png).stat().st_size > 1000, png


def test_one_progress_bar_counts_every_iteration(tiny_sweep):
    _, _, err = tiny_sweep
    total = FIRST + 2 * (ITERS - FIRST) + 2 * ITERS  # trunk, two forks, two bounds
    assert f"{total}/{total}" in err


def test_fork_equals_a_straight_run(tiny_sweep, tmp_path):
    """The forked cbda run (trunk checkpoint, then resumed) gives the numbers of a straight run
    of the same config and seed: forking is exact, and the numbers repeat run after run."""
    import torch
    work, s, _ = tiny_sweep
    torch.set_num_threads(1)
    cfg = json.loads((work / "sweep.json").read_text())["config"]
    cfg["data"].update(source_root=str(work / "data" / "gtav"), target_root=str(work / "data" / "cityscapes"))
    cfg["active"].update(strategy="cbda", budget=0.1)
    cfg["seed"] = 0
    straight = train(cfg, tmp_path / "straight", progress=False, quiet=True)
    fork = _run(s, "adapt", "cbda")
    assert straight["final"]["miou"] == fork["miou"]
    assert straight["final"]["per_class_iou"] == fork["per_class_iou"]
    assert [r["class_histogram"] for r in straight["rounds"]] == [r["class_histogram"] for r in fork["rounds"]]
    # and the trunk really is shared: both forks resumed from the same round-1 checkpoint
    trunk = work / "seed0" / "trunk" / "checkpoints" / f"iter_{FIRST:07d}.pt"
    for strategy in ("ra", "cbda"):
        m = json.loads((work / "seed0" / f"{strategy}_0.1" / "metrics.json").read_text())
        assert m["resumed_from"] == str(trunk)


def test_resume_skips_finished_runs_and_redoes_the_rest(tiny_sweep, tmp_path):
    import shutil
    work0, s0, _ = tiny_sweep
    work = tmp_path / "sweep"
    shutil.copytree(work0, work)
    # a killed sweep: the cbda run never finished
    (work / "seed0" / "cbda_0.1" / "metrics.json").unlink()
    shutil.rmtree(work / "seed0" / "cbda_0.1" / "checkpoints")
    kept = {p: p.stat().st_mtime_ns for p in work.glob("seed0/*/metrics.json")}
    # --report-only renders what finished and names what did not, training nothing
    assert main(["compare", "--work-dir", str(work), "--strategies", "ra,cbda", "--seeds", "0",
                 "--budgets", "0.1", "--threads", "1", "--report-only", *TINY]) == 0
    partial = json.loads((work / "compare.json").read_text())
    assert partial["unfinished"] == ["seed0/cbda_0.1"] and not (work / "seed0" / "cbda_0.1" / "metrics.json").exists()
    assert "**Unfinished runs**" in (work / "compare.md").read_text()
    s = sweep("compare", "ra,cbda", "0", "0.1", work, overrides=TINY, threads=1, resume=True, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # nothing finished was redone
    a, b = _run(s0, "adapt", "cbda"), _run(s, "adapt", "cbda")
    assert a["miou"] == b["miou"] and a["rounds"] == b["rounds"]
    assert json.loads((work / "compare.json").read_text())["unfinished"] == []


def test_refusals_before_any_work(tiny_sweep, tmp_path, capsys):
    work, _, _ = tiny_sweep
    # an existing sweep needs --resume; a different thread count is refused on resume
    assert main(["compare", "--work-dir", str(work), "--strategies", "ra", "--seeds", "0", "--budgets", "0.1",
                 "--no-progress", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(CompareError, match="--threads"):
        sweep("compare", "ra", "0", "0.1", work, overrides=TINY, threads=2, resume=True, progress=False)
    with pytest.raises(CompareError, match="config differs"):
        sweep("compare", "ra", "0", "0.1", work, overrides=TINY[:-1], threads=1, resume=True, progress=False)
    # a user's folder with files in it is never written into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["compare", "--work-dir", str(mine), "--no-progress", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an empty folder" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # bad arguments name the argument and the accepted form
    for args, key in ((["--strategies", "ra,foo"], "--strategies"), (["--seeds", "a"], "--seeds"),
                      (["--budgets", "0"], "--budgets"), (["train.itres=3"], "train.itres")):
        assert main(["compare", "--work-dir", str(tmp_path / "new"), "--no-progress", *args]) == 2
        assert key in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with pytest.raises(CompareError, match="mode must be adapt"):
        sweep("compare", "ra", "0", "0.1", tmp_path / "x", overrides=["mode=supervised"])
    with pytest.raises(ConfigError, match="active.schedule"):  # the config schema, at load
        sweep("compare", "ra", "0", "0.1", tmp_path / "x", overrides=["active.schedule=[1, 2, 3, 4, 2000]"])


def test_parsers():
    assert parse_strategies("ra, cbda") == ["ra", "cbda"]
    assert parse_seeds("2,0") == [2, 0]
    assert parse_budgets("0.05,0.1") == [0.05, 0.1]
    for f, bad in ((parse_strategies, "ra,ra"), (parse_seeds, "-1"), (parse_budgets, "1.5"), (parse_budgets, "")):
        with pytest.raises(CompareError):
            f(bad)


def _record(seed, kind, strategy, miou, ious, imbalance=(0.3, 0.2)):
    classes = ["road", "pole"]
    rounds = [{"round": k, "iteration": k, "class_histogram": {"road": 90, "pole": 10 * k},
               "imbalance_score": v, "labelled_fraction": 0.01, "num_picks": 3}
              for k, v in enumerate(imbalance, 1)] if kind == "adapt" else []
    return {"seed": seed, "kind": kind, "strategy": strategy, "budget": 0.1 if kind == "adapt" else None,
            "dir": f"seed{seed}/{strategy or kind}",
            "metrics": {"seconds": 1.0, "rounds": rounds,
                        "final": {"miou": miou, "min_iou": min(ious), "min_class": "pole",
                                  "per_class_iou": dict(zip(classes, ious)),
                                  "class_pixels": {"road": 100, "pole": 5}}}}


def test_summary_statistics_are_paired_over_seeds():
    recs = [_record(0, "adapt", "ra", 50.0, [90.0, 10.0]), _record(1, "adapt", "ra", 40.0, [80.0, 0.0]),
            _record(0, "adapt", "cbda", 53.0, [89.0, 17.0], (0.1, 0.05)),
            _record(1, "adapt", "cbda", 41.0, [80.0, 2.0], (0.2, 0.15)),
            _record(0, "supervised", None, 60.0, [95.0, 0.5]), _record(1, "supervised", None, 70.0, [95.0, 45.0])]
    s = build_summary(recs, load_config("compare"), {"cpu": "x", "cpus": 2, "torch": "t"},
                      {"strategies": ["ra", "cbda"], "seeds": [0, 1], "budgets": [0.1], "bounds": True,
                       "threads": 2, "config": "compare", "overrides": []}, {}, seconds=1.0)
    row = next(r for r in s["summary"] if r["strategy"] == "cbda")
    assert row["miou"] == pytest.approx(47.0) and row["miou_std"] == pytest.approx(8.485, abs=1e-3)
    assert row["miou_gain"] == pytest.approx(2.0)            # paired: (3 + 1) / 2
    assert row["miou_gain_std"] == pytest.approx(1.4142, abs=1e-4)
    assert row["per_class_gain"] == {"road": pytest.approx(-0.5), "pole": pytest.approx(4.5)}
    assert row["imbalance_per_round"] == pytest.approx([0.15, 0.1])
    assert row["labelled_share"]["pole"] == pytest.approx((20 / 110 + 20 / 110) / 2)
    assert s["not_learned_when_supervised"] == {"pole": [0]}
    assert s["classes_by_frequency"] == ["road", "pole"]
    assert s["run_seconds"] == 6.0  # the six runs' seconds: what the sweep cost, over resumptions
    md = render_markdown(s)
    assert "| 10 % | cbda | 2 | 47.0 ± 8.5 | +2.0 ± 1.4 |" in md and "pole (0)" in md


def test_resume_survives_keys_the_schema_gained():
    # a sweep.json written before the schema knew a key (here: active.labels) is the same config
    from cbda.train.compare import _same_config
    cfg = load_config("compare", list(TINY))
    older = json.loads(json.dumps(cfg))
    del older["active"]["labels"]
    assert _same_config(older, cfg)
    older["train"]["iters"] = cfg["train"]["iters"] + 1
    assert not _same_config(older, cfg)
    assert not _same_config({"train": {"iters": "x"}}, cfg)
