"""End to end on tiny generated datasets in the real layouts: a few iterations, two rounds,
resume, evaluation, report."""
import importlib.util
import json
import re
import shutil

import numpy as np
import pytest
import torch

import cbda
from cbda.train import checkpoint as ckpt
from cbda.train.cli import main
from cbda.train.config import load_config
from cbda.train.trainer import train


def _state(run):
    return cbda.ActiveLabelState.load(run / "active_state.pt")


def _final_weights(run):
    return ckpt.load(ckpt.latest(run / "checkpoints"))["model"]


def test_gtav_to_cityscapes_two_rounds_and_exact_resume(tiny_data, tiny_overrides, tmp_path, capsys):
    ov = tiny_overrides(tiny_data, "gtav", **{"eval.before_rounds": "true"})
    straight = tmp_path / "straight"
    m = train(load_config("demo", ov), straight, progress=False, quiet=True)

    # metrics.json: per-round histogram + imbalance, and the final object
    saved = json.loads((straight / "metrics.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert [r["iteration"] for r in saved["rounds"]] == [2, 4]
    for r in saved["rounds"]:
        assert set(r["class_histogram"]) == set(saved["classes"]) and len(saved["classes"]) == 19
        assert 0 <= r["imbalance_score"] <= 1 and r["labelled_pixels"] > 0
        assert "miou_before" in r
    assert saved["rounds"][1]["labelled_pixels"] > saved["rounds"][0]["labelled_pixels"]
    final = saved["final"]
    assert {"miou", "per_class_iou", "min_iou"} <= set(final) and len(final["per_class_iou"]) == 19
    assert (straight / "metrics.csv").read_text().count("\n") == 1 + 3  # header + iterations 2, 4, 6
    if importlib.util.find_spec("tensorboard") is not None:
        assert any((straight / "tensorboard").iterdir())
    state = _state(straight)
    assert state.num_rounds == 2
    assert m["final"]["miou"] == final["miou"]

    # interrupted after the save at iteration 6: that checkpoint is corrupt (flipped bytes
    # inside a tensor, which torch.load alone would not notice) and a save of it was killed,
    # leaving its temporary file. --resume warns naming it, cleans the leftover, continues
    # from iteration 3 (between the rounds), and ends where the straight run ended.
    split = tmp_path / "split"
    shutil.copytree(straight, split)
    for f in ("metrics.json", "active_state.pt"):
        (split / f).unlink()
    bad = split / "checkpoints" / "iter_0000006.pt"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    leftover = split / "checkpoints" / "iter_0000006.pt.tmp-999999999"
    leftover.write_bytes(b"half a checkpoint")
    # --resume is a flag: the override after it is an override, not a checkpoint path
    assert main(["train", "--work-dir", str(split), "--resume", "--no-progress", "train.iters=6"]) == 0
    out = capsys.readouterr().out
    assert f"warning: checkpoint {bad} is corrupt" in out and "resumed from" in out and "iter_0000003.pt" in out
    assert not leftover.exists()
    resumed = _state(split)
    assert resumed.num_rounds == 2
    for i in range(6):
        assert np.array_equal(resumed.label_map(i), state.label_map(i)), f"picks differ on image {i}"
    assert torch.equal(resumed.class_counts(), state.class_counts())
    a, b = _final_weights(straight), _final_weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.load(ckpt.latest(split / "checkpoints"))["iteration"] == 6
    assert json.loads((split / "metrics.json").read_text())["final"]["miou"] == final["miou"]

    # cbda eval reproduces the final numbers, says nothing of resuming, and keeps every field
    # of metrics.json it does not recompute
    saved["note"] = "kept"
    (straight / "metrics.json").write_text(json.dumps(saved))
    assert main(["eval", "--work-dir", str(straight)]) == 0
    assert "resumed" not in capsys.readouterr().out
    after = json.loads((straight / "metrics.json").read_text())
    assert after["final"]["miou"] == pytest.approx(final["miou"])
    assert {k: v for k, v in after.items() if k != "final"} == {k: v for k, v in saved.items() if k != "final"}
    assert after["seconds"] == m["seconds"] and after["note"] == "kept"
    out = tmp_path / "report"
    assert main(["report", str(straight), str(split), "--out", str(out), "--baseline", "straight"]) == 0
    text = (out / "report.md").read_text()
    assert "| straight |" in text and "mIoU" in text
    for png in ("iou_gain_split.png", "imbalance.png", "histograms.png"):
        assert (out / png).stat().st_size > 1000


def test_synthia_to_cityscapes_cli(tiny_data, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "syn"
    rc = main(["train", "--config", "demo", "--work-dir", str(run), "--no-progress",
               *tiny_overrides(tiny_data, "synthia", **{"active.strategy": "cbra", "train.iters": 5,
                                                           "train.channels_last": "true"})])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "imbalance" in out
    saved = json.loads((run / "metrics.json").read_text())
    assert len(saved["classes"]) == 16 and len(saved["final"]["per_class_iou"]) == 16
    assert len(saved["rounds"]) == 2 and _state(run).num_rounds == 2


def test_source_only_and_supervised_modes(tiny_data, tiny_overrides, tmp_path):
    ov = tiny_overrides(tiny_data, "gtav", **{"train.iters": 2, "train.checkpoint_every": 0})
    m = train(load_config("demo", ov + ["mode=source_only", "train.bf16=true"]), tmp_path / "so",
              progress=False, quiet=True)
    assert m["rounds"] == [] and m["final"]["miou"] >= 0
    m = train(load_config("demo", ov + ["mode=supervised"]), tmp_path / "sup", progress=False, quiet=True)
    assert m["rounds"] == [] and m["final"]["miou"] >= 0


def test_missing_dataset_is_a_clear_cli_error(tmp_path, capsys):
    rc = main(["train", "--config", "gtav2cityscapes_cbda_5pct_spread", "--work-dir", str(tmp_path / "w"),
               f"data.target_root={tmp_path / 'cs'}", "model.pretrained=null"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cs" / "leftImg8bit" / "train") in err


def test_two_runs_print_identical_numbers(tiny_data, tiny_overrides, tmp_path, capsys):
    """Same seed, same thread count: the same picks, histograms, imbalance scores and IoUs."""
    ov = tiny_overrides(tiny_data, "gtav", **{"train.iters": 4, "active.schedule": "[1, 3]",
                                               "train.checkpoint_every": 0})
    outs, metrics = [], []
    for name in ("a", "b"):
        assert main(["train", "--config", "demo", "--work-dir", str(tmp_path / name), "--no-progress", *ov]) == 0
        outs.append(capsys.readouterr().out)
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        m.pop("seconds")
        for r in m["rounds"]:
            r.pop("seconds")
        metrics.append(m)
    assert metrics[0] == metrics[1]
    assert outs[0] == outs[1]
    assert re.search(r"imbalance score \d\.\d{3}\n", outs[0])  # rounded, not 17 digits
    assert not re.search(r"\d\.\d{6,}", outs[0])
