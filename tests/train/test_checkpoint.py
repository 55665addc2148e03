"""Checkpoints: atomic, checksummed; resume skips an unreadable newest one with a warning and
fails in one line when none is readable; leftovers of a killed save are cleaned."""
import pytest
import torch

from cbda.train import checkpoint as ckpt
from cbda.train.cli import main
from cbda.train.errors import CheckpointError


def _payload(it):
    p = {k: None for k in ckpt.PAYLOAD_KEYS}
    p.update(iteration=it, model={"w": torch.arange(4096, dtype=torch.float32) * it})
    return p


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_save_is_atomic_and_load_checks_the_digest(tmp_path):
    path = tmp_path / "iter_0000002.pt"
    ckpt.save(path, _payload(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002.pt", "iter_0000002.pt.sha256"]
    assert torch.equal(ckpt.load(path)["model"]["w"], _payload(2)["model"]["w"])
    _flip_middle_byte(path)  # inside the tensor's bytes: torch.load alone would accept it
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        ckpt.load(path)


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign"])
def test_unreadable_files_raise_the_package_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "iter_0000001.pt"
    if damage == "foreign":
        torch.save({"weights": 1}, path)
    else:
        ckpt.save(path, _payload(1))
        ckpt._sidecar(path).unlink()  # an older checkpoint without a digest: torch.load must notice
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with pytest.raises(CheckpointError, match=str(path)):
        ckpt.load(path)


def test_latest_good_falls_back_with_a_warning(tmp_path):
    for it in (1, 2, 3):
        ckpt.save(tmp_path / f"iter_{it:07d}.pt", _payload(it))
    _flip_middle_byte(tmp_path / "iter_0000003.pt")
    (tmp_path / "iter_0000002.pt").write_bytes(b"PK\x03\x04 truncated")
    warnings = []
    path, payload = ckpt.latest_good(tmp_path, warn=warnings.append)
    assert path.name == "iter_0000001.pt" and payload["iteration"] == 1
    assert len(warnings) == 2 and "iter_0000003.pt" in warnings[0] and "iter_0000002.pt" in warnings[1]
    (tmp_path / "iter_0000001.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .* \(3 found, all unreadable\)"):
        ckpt.latest_good(tmp_path, warn=warnings.append)


def test_prune_and_stale_temporaries(tmp_path):
    for it in (1, 2, 3):
        ckpt.save(tmp_path / f"iter_{it:07d}.pt", _payload(it))
    ckpt.prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iter_0000002.pt", "iter_0000002.pt.sha256", "iter_0000003.pt", "iter_0000003.pt.sha256"]
    (tmp_path / "iter_0000004.pt.tmp-999999999").write_bytes(b"killed")
    (tmp_path / "iter_0000004.pt.sha256").write_text("orphan")
    removed = ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == ["iter_0000004.pt.sha256", "iter_0000004.pt.tmp-999999999"]


def test_resume_with_no_readable_checkpoint_is_one_line(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["train", "--config", "demo", "--work-dir", str(work), "--dry-run"]) == 0
    (work / "checkpoints").mkdir(parents=True)
    (work / "config.yaml").write_text(capsys.readouterr().out)
    (work / ".cbda_run").touch()
    (work / "checkpoints" / "iter_0000500.pt").write_bytes(b"garbage")
    for argv in (["train", "--work-dir", str(work), "--resume", "--no-progress"],
                 ["train", "--work-dir", str(work), "--resume-from", str(work / "checkpoints" / "iter_0000500.pt")],
                 ["eval", "--work-dir", str(work)]):
        assert main(argv) == 2
        cap = capsys.readouterr()
        assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err
        assert "iter_0000500.pt" in cap.out + cap.err
    assert not (work / "data").exists()  # failed before generating any data


def test_a_new_run_does_not_mix_with_an_earlier_runs_checkpoints(tmp_path, capsys):
    work = tmp_path / "w"
    (work / "checkpoints").mkdir(parents=True)
    (work / ".cbda_run").touch()
    ckpt.save(work / "checkpoints" / "iter_0001500.pt", _payload(1500))
    assert main(["train", "--config", "demo", "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run (latest iter_0001500.pt); pass --resume" in err
