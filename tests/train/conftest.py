"""Tiny generated datasets in the real layouts, shared by the training tests."""
from __future__ import annotations

import pytest

pytest.importorskip("PIL")
pytest.importorskip("yaml")
pytest.importorskip("matplotlib")  # the `train` extra: pillow, pyyaml, tqdm, tensorboard, matplotlib

from cbda.train.data import synthetic  # noqa: E402

SIZE = (32, 64)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """{"gtav": root, "synthia": root, "cityscapes": root} with a handful of 32x64 images."""
    base = tmp_path_factory.mktemp("data")
    synthetic.write_source(base / "gtav", "gtav", 10, SIZE, seed=3)
    synthetic.write_source(base / "synthia", "synthia", 10, SIZE, seed=3)
    synthetic.write_cityscapes(base / "cityscapes", "train", 6, SIZE, seed=3)
    synthetic.write_cityscapes(base / "cityscapes", "val", 4, SIZE, seed=3)
    return {k: base / k for k in ("gtav", "synthia", "cityscapes")}


@pytest.fixture
def tiny_overrides():
    """overrides(data, source="gtav", **extra) -> list of key=value strings."""
    return _tiny_overrides


def _tiny_overrides(data: dict, source: str = "gtav", **extra) -> list[str]:
    """Overrides turning the demo config into a seconds-long run on `tiny_data`."""
    ov = {
        "data.source": source, "data.source_root": str(data[source]),
        "data.target_root": str(data["cityscapes"]), "data.generate": "null",
        "data.num_classes": 16 if source == "synthia" else 19,
        "data.source_size": "[32, 64]", "data.target_size": "[32, 64]", "data.eval_size": "[32, 64]",
        "model.width": 8, "model.head_channels": 16, "model.low_channels": 8,
        "train.iters": 6, "train.poly_iters": 6, "train.checkpoint_every": 3, "train.log_every": 2,
        "train.keep_checkpoints": 0, "active.schedule": "[2, 4]", "active.rounds": 2,
        "active.budget": 0.1, "eval.batch_size": 2, "eval.before_rounds": "false",
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]
