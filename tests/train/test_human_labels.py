"""`active.labels: human`: train stops at a round with the export written; `cbda import` of a
Label Studio / CVAT export records the labels; `cbda train --resume` goes on."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import cbda
from cbda.annotate.brush_rle import mask_to_brush_rle
from cbda.annotate.mask_rle import encode_cvat_rle, format_cvat_rle
from cbda.train import checkpoint as ckpt
from cbda.train.cli import main
from cbda.train.data import Cityscapes
from cbda.train.data.labels import class_names


def _state(run):
    from cbda.train.distributed import state_from_bytes
    return state_from_bytes(ckpt.load(ckpt.latest(run / "checkpoints"))["state"])


def _gt(tiny_data):
    ds = Cityscapes(tiny_data["cityscapes"], "train", None, 19, with_labels=True)
    return ds, {i: ds.read_gt(i).astype(np.uint8) for i in range(len(ds))}


def _ls_export(tasks, gt, names):
    out = []
    for k, t in enumerate(tasks):
        g = gt[t["data"]["cbda_image_id"]]
        res = [{"type": "brushlabels", "from_name": "label", "to_name": "image",
                "original_width": g.shape[1], "original_height": g.shape[0],
                "value": {"format": "rle", "rle": mask_to_brush_rle(g == c), "brushlabels": [names[c]]}}
               for c in np.unique(g[g != 255]).tolist()]
        out.append({"id": k + 1, "data": t["data"], "annotations": [{"id": k + 1, "result": res}]})
    return out


def _cvat_export(xml_path, gt, ds, names):
    root = ET.parse(xml_path).getroot()
    by_name = {p.relative_to(p.parent.parent).as_posix(): i for i, p in enumerate(ds.images)}
    for img in root.iter("image"):
        for m in list(img):
            img.remove(m)
        g = gt[by_name[img.get("name")]]
        for c in np.unique(g[g != 255]).tolist():
            ys, xs = np.nonzero(g == c)
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            ET.SubElement(img, "mask", {"label": names[c], "rle": format_cvat_rle(encode_cvat_rle((g == c)[y0:y1 + 1, x0:x1 + 1])),
                                        "left": str(x0), "top": str(y0), "width": str(x1 - x0 + 1),
                                        "height": str(y1 - y0 + 1), "z_order": "0"})
    return ET.tostring(root)


def test_human_round_trip_through_the_cli(tiny_data, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "human"
    ov = tiny_overrides(tiny_data, "gtav", **{"active.labels": "human"})
    assert main(["train", "--config", "demo", "--work-dir", str(run), "--no-progress", *ov]) == 0
    out = capsys.readouterr().out
    assert "round 1 waits for human labels" in out and "cbda import" in out
    r1 = run / "annotate" / "round_0001"
    for f in ("labelstudio/config.xml", "labelstudio/tasks.json", "cvat/annotations.xml",
              "previews/contact_sheet.png", "predicted.npy"):
        assert (r1 / f).is_file(), f
    state = _state(run)
    assert state.pending_rounds() == [1]
    assert ckpt.load(ckpt.latest(run / "checkpoints"))["iteration"] == 2
    assert not (run / "metrics.json").is_file() or "final" not in json.loads((run / "metrics.json").read_text())

    # resuming before the import explains what to do
    assert main(["train", "--work-dir", str(run), "--resume", "--no-progress"]) == 2
    assert "waits for human labels" in capsys.readouterr().err

    names = class_names(19)
    ds, gt = _gt(tiny_data)
    tasks = json.loads((r1 / "labelstudio" / "tasks.json").read_text())
    bad = _ls_export(tasks, gt, names)
    bad[0]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["unicorn"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    before = (ckpt.latest(run / "checkpoints")).read_bytes()
    assert main(["import", "--work-dir", str(run), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown class name 'unicorn'" in err and "task 1" in err and err.count("\n") == 1
    assert ckpt.latest(run / "checkpoints").read_bytes() == before  # nothing recorded

    assert main(["import", "--work-dir", str(tmp_path / "nowhere"), str(tmp_path / "bad.json")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err
    (tmp_path / "r1.json").write_text(json.dumps(_ls_export(tasks, gt, names)))
    assert main(["import", "--work-dir", str(run), str(tmp_path / "r1.json")]) == 0
    assert "recorded" in capsys.readouterr().out
    want = cbda.ActiveLabelState.from_bytes(state.to_bytes())
    want.label_from_ground_truth(lambda i: gt[i], 1)
    got = _state(run)
    assert np.array_equal(got.labels(1), want.labels(1))  # pixel for pixel

    # round 2 through CVAT, with `cbda export` writing the other formats first
    assert main(["train", "--work-dir", str(run), "--resume", "--no-progress"]) == 0
    assert "round 2 waits" in capsys.readouterr().out
    assert main(["export", "--work-dir", str(run), "--format", "png", "json", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "regions.json").is_file()
    r2 = run / "annotate" / "round_0002"
    (tmp_path / "r2.xml").write_bytes(_cvat_export(r2 / "cvat" / "annotations.xml", gt, ds, names))
    assert main(["import", "--work-dir", str(run), str(tmp_path / "r2.xml")]) == 0
    assert main(["train", "--work-dir", str(run), "--resume", "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2] and "final" in metrics
    assert all(r["labelled_pixels"] > 0 for r in metrics["rounds"])
    final = cbda.ActiveLabelState.load(run / "active_state.pt")
    want2 = cbda.ActiveLabelState.from_bytes(final.to_bytes())
    want2.label_from_ground_truth(lambda i: gt[i], 2)
    assert np.array_equal(final.labels(2), want2.labels(2)) and final.pending_rounds() == []


@pytest.mark.parametrize("key, value", [("active.labels", "crowd"), ("active.export", "[labelstudio, yolo]")])
def test_bad_human_settings_are_config_errors(tiny_data, tiny_overrides, tmp_path, capsys, key, value):
    ov = tiny_overrides(tiny_data, "gtav", **{"active.labels": "human", key: value})
    assert main(["train", "--config", "demo", "--work-dir", str(tmp_path / "r"), "--no-progress", *ov]) == 2
    err = capsys.readouterr().err
    assert key in err and value.split(", ")[-1].strip("[]") in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "checkpoints").exists()  # failed before any training


def test_predicted_windows_are_the_models_argmax_at_the_label_size():
    import torch
    import torch.nn.functional as F

    from cbda.annotate import RoundWindows
    from cbda.selection import Selection
    from cbda.train.human import predicted_windows

    H, W, C = 12, 16, 5
    g = torch.Generator().manual_seed(0)
    low = torch.randn(3, C, 3, 4, generator=g)  # per-image low-resolution logits

    class Model(torch.nn.Module):
        def forward(self, x):
            return low[x[:, 0, 0, 0].long()]

    class Data:
        def __getitem__(self, i):
            return {"image": torch.full((3, 6, 8), float(i))}

    state = cbda.ActiveLabelState((H, W), C, 3)
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    state.record(Selection(t([2, 0, 2]), t([0, 5, 11]), t([0, 7, 15]), torch.ones(3), t([0, 0, 0]), 1, (H, W), 1, "da"))
    win = RoundWindows(state, 1)
    got = predicted_windows(Model(), Data(), win, prepare=lambda x: x)
    want = cbda.ActiveLabelState.from_bytes(state.to_bytes())
    full = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=True).argmax(1).numpy().astype(np.uint8)
    want.label_from_ground_truth(lambda i: full[i], 1)
    assert np.array_equal(got, want.labels(1))  # 255 where a window leaves the image
