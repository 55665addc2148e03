"""Users' data is never overwritten: the built-in dataset is generated only into a new or empty
folder or one cbda generated; a refused run leaves every file byte-identical."""
import hashlib
import json
import os

import pytest

from cbda.train.cli import main
from cbda.train.data import generated, synthetic
from cbda.train.errors import DataFolderError

SPEC = {"seed": 1, "size": [16, 32], "num_source": 3, "num_train": 2, "num_val": 1}
GEN = ["data.generate.size=[16, 32]", "data.generate.num_source=3", "data.generate.num_train=2",
       "data.generate.num_val=1", "data.source_size=[16, 32]", "data.target_size=[16, 32]",
       "data.eval_size=[16, 32]", "active.schedule=[1, 2]", "train.iters=3"]


def _snapshot(root):
    """{relative path: (sha256, mtime_ns)} of every file under root."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(path):
    """A folder of the user's, with names that collide with the generated ones."""
    (path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png").write_bytes(b"user image")
    (path / "images").mkdir()
    (path / "images" / "00001.png").write_bytes(b"user source image")
    (path / "notes.txt").write_text("mine")
    return _snapshot(path)


@pytest.mark.parametrize("key", ["data.target_root", "data.source_root"])
def test_refused_train_leaves_a_user_folder_byte_identical(tmp_path, capsys, key):
    user = tmp_path / "mine"
    user.mkdir()
    before = _user_folder(user)
    work = tmp_path / "w"
    rc = main(["train", "--config", "demo", "--work-dir", str(work), "--no-progress", f"{key}={user}", *GEN])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and key in err and str(user) in err
    assert _snapshot(user) == before
    assert not work.exists()  # refused before anything was written


def test_refused_work_dir_is_untouched(tmp_path, capsys):
    user = tmp_path / "home"
    user.mkdir()
    before = _user_folder(user)
    rc = main(["train", "--config", "demo", "--work-dir", str(user), "--no-progress", *GEN])
    err = capsys.readouterr().err
    assert rc == 2 and "--work-dir" in err and "not a cbda work dir" in err
    assert _snapshot(user) == before


def test_generates_into_new_or_empty_folders_and_reuses_its_own(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    tgt.mkdir()  # empty: accepted
    generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: None)
    params = generated.generator_params(SPEC, "gtav")
    for root, role in ((src, "source"), (tgt, "target")):
        files = set(_snapshot(root))
        assert files == generated.generated_files(params, role) | {generated.MARKER}
        marker = json.loads((root / generated.MARKER).read_text())
        assert marker == {"params": params, "role": role, "complete": True}
    before = _snapshot(src), _snapshot(tgt)
    generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: pytest.fail("regenerated"))
    assert (_snapshot(src), _snapshot(tgt)) == before


def test_listing_matches_the_writers_for_every_layout(tmp_path):
    params = generated.generator_params(SPEC, "synthia")
    synthetic.write_source(tmp_path / "s", "synthia", SPEC["num_source"], (16, 32))
    assert set(_snapshot(tmp_path / "s")) == generated.generated_files(params, "source")


def test_other_settings_regenerate_only_a_folder_cbda_made_whole(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: None)
    bigger = dict(SPEC, num_train=4, seed=2)
    generated.ensure_generated(bigger, src, tgt, "gtav", log=lambda m: None)
    params = generated.generator_params(bigger, "gtav")
    assert set(_snapshot(tgt)) == generated.generated_files(params, "target") | {generated.MARKER}
    assert json.loads((tgt / generated.MARKER).read_text())["params"] == params

    # a file of the user's inside: refused, and neither root is touched
    (tgt / "gtFine" / "my_annotations.json").write_text("{}")
    before = _snapshot(src), _snapshot(tgt)
    with pytest.raises(DataFolderError, match=r"data.target_root: .* files cbda did not write \(e.g. gtFine/my_annotations.json\)"):
        generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: None)
    assert (_snapshot(src), _snapshot(tgt)) == before


def test_an_interrupted_generation_is_finished_next_time(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    calls = []

    def killed(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    real = synthetic.write_cityscapes
    synthetic.write_cityscapes = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: None)
    finally:
        synthetic.write_cityscapes = real
    assert calls and json.loads((tgt / generated.MARKER).read_text())["complete"] is False
    (tgt / f"{generated.MARKER}.tmp-999999").write_text("half a marker")
    generated.ensure_generated(SPEC, src, tgt, "gtav", log=lambda m: None)
    params = generated.generator_params(SPEC, "gtav")
    assert set(_snapshot(tgt)) == generated.generated_files(params, "target") | {generated.MARKER}


def test_a_file_in_place_of_a_root_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataFolderError, match="data.source_root: .* is a file"):
        generated.ensure_generated(SPEC, tmp_path / "f", tmp_path / "t", "gtav", log=lambda m: None)
    assert not (tmp_path / "t").exists()


def test_missing_roots_without_generate_name_the_key(tmp_path, capsys):
    for key, fragment in (("data.target_root", "leftImg8bit"), ("data.source_root", "images")):
        other = "data.source_root" if key == "data.target_root" else "data.target_root"
        cs = tmp_path / "cs"
        if key == "data.source_root":  # a valid target, a missing source
            synthetic.write_cityscapes(cs, "train", 2, (16, 32))
            synthetic.write_cityscapes(cs, "val", 1, (16, 32))
        rc = main(["train", "--config", "demo", "--work-dir", str(tmp_path / "w"), "data.generate=null",
                   f"{key}={tmp_path / 'missing'}", f"{other}={cs}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"`{key}=<root>`" in err and str(tmp_path / "missing" / fragment) in err
        assert not (tmp_path / "w").exists()


def test_same_root_for_both_generated_domains_is_refused():
    from cbda.train.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="data.source_root: the generated source and target need separate folders"):
        load_config("demo", ["data.source_root=/tmp/x", "data.target_root=/tmp/x/"])


def test_pid_of_a_live_process_is_never_treated_as_stale(tmp_path):
    from cbda.train import checkpoint as ckpt
    live = tmp_path / f"metrics.json.tmp-{os.getpid()}"
    live.write_text("x")
    dead = tmp_path / "iter_0000003.pt.tmp-999999999"
    dead.write_text("x")
    assert ckpt.remove_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and not dead.exists()
