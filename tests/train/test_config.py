import pytest

from cbda.train import schema
from cbda.train.config import CONFIG_DIR, ConfigError, available_configs, load_config, merge


def test_merge_is_recursive_and_pure():
    a = {"x": {"y": 1, "z": [1]}, "k": 1}
    b = {"x": {"y": 2}, "n": 3}
    m = merge(a, b)
    assert m == {"x": {"y": 2, "z": [1]}, "k": 1, "n": 3}
    assert a["x"]["y"] == 1


def test_base_inheritance_and_typed_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: x}\nlst: [1, 2]\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\na: {c: y}\n")
    cfg = load_config(tmp_path / "child.yaml", ["a.b=0.5", "lst=[3]", "a.c=null"], validate=False)
    assert cfg["a"] == {"b": 0.5, "c": None} and cfg["lst"] == [3]
    assert cfg["name"] == "child"


def test_override_errors_name_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("a: {b: 1}\n")
    with pytest.raises(ConfigError, match="a.q"):
        load_config(tmp_path / "c.yaml", ["a.q=1"], validate=False)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(tmp_path / "c.yaml", ["a.b"], validate=False)
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


def test_every_shipped_config_validates():
    names = available_configs()
    assert len(names) >= 53
    for name in names:
        cfg = load_config(name)
        assert schema.validate(cfg) == cfg, name  # validated configs are fixed points
        for section, fields in schema.SCHEMA.items():  # complete: every key of the schema
            if isinstance(fields, dict):
                assert set(cfg[section]) == set(fields), (name, section)
    for base in sorted((CONFIG_DIR / "_base_").glob("*.yaml")):
        load_config(base, validate=False)  # partial on their own; they load and merge


# (override, text the one-line error must hold): names, types, ranges, cross-field rules
BAD = [
    ("active.strategy=cbdaa", "active.strategy: expected one of image, ra, da, cbra, cbda"),
    ("active.budget=0", "active.budget: expected a number > 0.0 and <= 1.0, got 0"),
    ("active.budget=1.5", "active.budget"),
    ("active.budget=lots", "active.budget: expected a number"),
    ("active.budget=true", "active.budget"),
    ("active.schedule=[1000,500]", "active.schedule: expected strictly increasing"),
    ("active.schedule=[500]", "active.schedule: expected one iteration per round (active.rounds = 2)"),
    ("active.schedule=[500,1500]", "active.schedule: every round must come before train.iters = 1500"),
    ("active.schedule=[-1,500]", "active.schedule: expected a list of integers >= 0"),
    ("active.rounds=0", "active.rounds: expected an integer >= 1"),
    ("active.radius=-1", "active.radius: expected an integer >= 0"),
    ("active.radius=48", "active.radius: a region of (2r+1)^2 = 97x97 pixels must fit in the label size 96x192"),
    ("active.goal=[1,0]", "active.goal: expected 19 shares (data.num_classes), got 2"),
    ("active.goal=[0.5,0.5,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.5]", "active.goal: expected a distribution"),
    ("active.heuristic=entropyy", "active.heuristic: expected one of ripu"),
    ("active.backend=gpu", "active.backend: expected one of auto, reference, cpu, triton, cuda"),
    ("active.batch_size=0", "active.batch_size"),
    ("active.strategy=null", "active.strategy: mode adapt acquires labels"),
    ("train.iters=ten", "train.iters: expected an integer >= 1, got 'ten'"),
    ("train.iters=10.5", "train.iters: expected an integer"),
    ("train.lr=0", "train.lr: expected a number > 0.0"),
    ("train.bf16=yes please", "train.bf16: expected true or false"),
    ("train.momentum=1", "train.momentum"),
    ("train.nl_threshold=0", "train.nl_threshold"),
    ("train.log_every=0", "train.log_every"),
    ("model.backbone=resnet34", "model.backbone: expected one of resnet18, resnet50, resnet101"),
    ("model.output_stride=4", "model.output_stride"),
    ("model.aspp_dilations=[]", "model.aspp_dilations: expected a non-empty list"),
    ("model.dropout=1", "model.dropout"),
    ("data.num_classes=20", "data.num_classes: expected one of 16, 19"),
    ("data.num_classes=19.0", "data.num_classes: expected one of 16, 19, got 19.0 (float)"),
    ("data.source=cityscapes", "data.source: expected one of gtav, synthia"),
    ("data.source=null", "data.source: mode adapt trains on a source domain"),
    ("data.source_size=[0,10]", "data.source_size: expected [H, W], two positive integers"),
    ("data.target_size=96", "data.target_size: expected [H, W]"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.generate=null", "data.target_root: not set"),
    ("data.generate.num_train=0", "data.generate.num_train: expected an integer >= 1"),
    ("data.generate=5", "data.generate: expected a mapping"),
    ("data.generate.size=[96]", "data.generate.size"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.flip=1", "eval.flip: expected true or false"),
    ("mode=train", "mode: expected one of adapt, source_only, supervised"),
    ("device=tpu", "device: expected one of auto, cpu, cuda"),
    ("seed=-3", "seed: expected an integer >= 0"),
    ("train.itres=5", "unknown key 'train.itres'"),
    ("train=5", "train: expected a mapping"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_schema_names_the_key_and_the_accepted_form(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("demo", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_keys_and_bad_files_fail_at_load(tmp_path):
    (tmp_path / "typo.yaml").write_text("_base_: demo.yaml\nactive: {stratgy: cbda}\n")
    (tmp_path / "demo.yaml").write_text((CONFIG_DIR / "demo.yaml").read_text().replace(
        "_base_/", str(CONFIG_DIR / "_base_") + "/"))
    with pytest.raises(ConfigError, match=r"active.stratgy: unknown key \(known in active: strategy"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "extra.yaml").write_text("_base_: demo.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate: unknown key"):
        load_config(tmp_path / "extra.yaml")
    (tmp_path / "broken.yaml").write_text("train:\n  iters: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+ is not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml .a _base_ of .*orphan.yaml.: no such file"):
        load_config(tmp_path / "orphan.yaml")


def test_defaults_fill_in_and_overrides_may_name_them(tmp_path):
    (tmp_path / "min.yaml").write_text(
        "data: {source: gtav, source_root: s, target_root: t, num_classes: 19, source_size: [64, 64],"
        " target_size: [64, 64], eval_size: [64, 64]}\n"
        "train: {iters: 100, lr: 0.01}\n"
        "active: {strategy: ra, budget: 0.05, rounds: 1, schedule: [10]}\n")
    cfg = load_config(tmp_path / "min.yaml", ["train.poly_iters=50", "train.lr=1e-4"])
    assert cfg["train"]["poly_iters"] == 50 and cfg["train"]["lr"] == 1e-4  # "1e-4": YAML 1.1 reads a str
    assert cfg["train"]["momentum"] == 0.9 and cfg["model"]["backbone"] == "resnet101"
    assert cfg["eval"] == {"flip": True, "batch_size": 1, "every": 0, "before_rounds": False}
    assert load_config(tmp_path / "min.yaml")["train"]["poly_iters"] == 100  # null: train.iters


def test_non_adapt_modes_need_no_acquisition_settings():
    cfg = load_config("synthia2cityscapes_source_only", ["active.schedule=null", "active.budget=null"])
    assert cfg["active"]["strategy"] is None
    cfg = load_config("cityscapes_supervised")
    assert cfg["data"]["source"] is None and cfg["data"]["source_root"] is None
