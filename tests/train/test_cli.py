"""The CLI's contract: a user's mistake is one line on stderr and exit status 2, never a
traceback; --dry-run checks everything and writes nothing; --resume is a flag."""
import json

import pytest
import yaml

from cbda.train.cli import main


def _one_line_error(capsys, argv, *fragments):
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (rc, cap.err)
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbda"), cap.err
    assert "Traceback" not in cap.err + cap.out
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["train", "--config", "demo", "--work-dir", str(work), "--dry-run", "train.iters=700",
                 "active.schedule=[100, 600]"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["iters"] == 700 and cfg["active"]["schedule"] == [100, 600]
    assert cfg["model"]["dropout"] == 0.1  # defaults filled in
    assert not work.exists()
    _one_line_error(capsys, ["train", "--config", "demo", "--work-dir", str(work), "--dry-run",
                             "active.schedule=[3,2]"], "active.schedule", "strictly increasing")
    assert not work.exists()


@pytest.mark.parametrize("argv,fragments", [
    (["train", "--config", "demo", "--work-dir", "{w}", "active.strategy=cbad"], ["cbda train: error: active.strategy"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "active.budget=[0.1]"], ["active.budget: expected a number"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "train.iters"], ["expected key=value"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "nope.key=1"], ["nope is not a section"]),
    (["train", "--config", "no_such_config", "--work-dir", "{w}"], ["neither a file nor a shipped config"]),
    (["train", "--config", "demo"], ["--work-dir"]),
    (["train", "--work-dir", "{w}"], ["--config: required for a new run"]),
    (["train", "--work-dir", "{w}", "--resume"], ["--config: required", "config.yaml does not exist"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "--resume"], ["--resume: no checkpoint in"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "--resume-from", "{w}/x.pt"], ["--resume-from: no such file"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "--resume", "--resume-from", "x.pt"], ["not allowed with"]),
    (["train", "--config", "demo", "--work-dir", "{w}", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["eval", "--work-dir", "{w}"], ["--config: required"]),
    (["eval", "--config", "demo", "--work-dir", "{w}"], ["no checkpoint in", "checkpoints"]),
    (["report", "{w}"], ["cbda report: error: no metrics.json at"]),
    (["report"], ["the following arguments are required: runs"]),
    (["fly"], ["unknown command 'fly'"]),
])
def test_user_mistakes_are_one_line_and_status_2(tmp_path, capsys, argv, fragments):
    argv = [a.replace("{w}", str(tmp_path / "w")) for a in argv]
    _one_line_error(capsys, argv, *fragments)
    assert not (tmp_path / "w").exists()


def test_bad_yaml_and_unreadable_metrics_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iters: 5\n")
    _one_line_error(capsys, ["train", "--config", str(bad), "--work-dir", str(tmp_path / "w")],
                    "bad.yaml", "not valid YAML")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{not json")
    _one_line_error(capsys, ["report", str(run)], "metrics.json is unreadable")
    (run / "metrics.json").write_text(json.dumps({"name": "run", "classes": []}))
    _one_line_error(capsys, ["report", str(run), "--out", str(tmp_path / "out"), "--baseline", "x"],
                    "--baseline: 'x' is not one of the runs (run)")
    assert not (tmp_path / "out").exists()


def test_resume_is_a_flag_so_overrides_follow_it(tmp_path, capsys):
    """`--resume train.iters=3000` is an override, not a checkpoint path."""
    work = tmp_path / "w"
    assert main(["train", "--config", "demo", "--work-dir", str(work), "--dry-run"]) == 0
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.yaml").write_text(capsys.readouterr().out)
    (work / ".cbda_run").touch()
    (work / "checkpoints" / "iter_0001500.pt").write_bytes(b"")  # only its presence is checked
    assert main(["train", "--work-dir", str(work), "--resume", "train.iters=3000", "--dry-run"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["iters"] == 3000 and cfg["name"] == "demo"
    assert main(["train", "--work-dir", str(work), "--resume-from", str(work / "checkpoints" / "iter_0001500.pt"),
                 "--dry-run", "train.iters=2000"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["iters"] == 2000


def test_radius_is_checked_against_the_native_label_size(tiny_data, tiny_overrides, tmp_path, capsys):
    ov = tiny_overrides(tiny_data, "gtav")  # no data.generate: the size is read from a label file
    assert main(["train", "--config", "demo", "--work-dir", str(tmp_path / "w"), "--dry-run", *ov,
                 "active.radius=15"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["train", "--config", "demo", "--work-dir", str(tmp_path / "w"), "--dry-run", *ov,
                             "active.radius=16"], "active.radius", "label size 32x64", "radius <= 15")


def test_the_python_entry_point_validates_too(tmp_path):
    from cbda.train.config import ConfigError, load_config
    from cbda.train.trainer import train
    cfg = load_config("demo", validate=False)
    cfg["active"]["schedule"] = [1000, 500]
    with pytest.raises(ConfigError, match="active.schedule"):
        train(cfg, tmp_path / "w", progress=False, quiet=True)
    assert not (tmp_path / "w").exists()
