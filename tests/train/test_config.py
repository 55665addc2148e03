import pytest

from cbda.train.config import ConfigError, available_configs, load_config, merge


def test_merge_is_recursive_and_pure():
    a = {"x": {"y": 1, "z": [1]}, "k": 1}
    b = {"x": {"y": 2}, "n": 3}
    m = merge(a, b)
    assert m == {"x": {"y": 2, "z": [1]}, "k": 1, "n": 3}
    assert a["x"]["y"] == 1


def test_base_inheritance_and_typed_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: x}\nlst: [1, 2]\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\na: {c: y}\n")
    cfg = load_config(tmp_path / "child.yaml", ["a.b=0.5", "lst=[3]", "a.c=null"])
    assert cfg["a"] == {"b": 0.5, "c": None} and cfg["lst"] == [3]
    assert cfg["name"] == "child"


def test_override_errors_name_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("a: {b: 1}\n")
    with pytest.raises(ConfigError, match="a.q"):
        load_config(tmp_path / "c.yaml", ["a.q=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(tmp_path / "c.yaml", ["a.b"])
    with pytest.raises(ConfigError, match="shipped"):
        load_config("no_such_config")


def test_shipped_grid_is_complete_and_consistent():
    names = set(available_configs())
    for src in ("gtav", "synthia"):
        for strat in ("ra", "da", "cbra", "cbda"):
            for b in (5, 10, 20):
                for sch in ("original", "spread"):
                    cfg = load_config(f"{src}2cityscapes_{strat}_{b}pct_{sch}")
                    assert cfg["active"]["strategy"] == strat
                    assert cfg["active"]["budget"] == pytest.approx(b / 100)
                    assert len(cfg["active"]["schedule"]) == cfg["active"]["rounds"] == 5
                    assert cfg["active"]["schedule"][-1] == (18000 if sch == "original" else 30000)
                    assert cfg["data"]["num_classes"] == (19 if src == "gtav" else 16)
                    assert cfg["model"]["backbone"] == "resnet101"
        assert load_config(f"{src}2cityscapes_source_only")["mode"] == "source_only"
    assert load_config("cityscapes_supervised")["mode"] == "supervised"
    assert load_config("cityscapes16_supervised")["data"]["num_classes"] == 16
    demo = load_config("demo")
    assert demo["data"]["generate"] and demo["active"]["rounds"] >= 2
    assert "demo" in names
