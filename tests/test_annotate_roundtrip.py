"""Export a round to Label Studio / CVAT / previews and import answers back (no tool needed:
the answers are built here the way the tools write them)."""
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from cbda.annotate import export_round, import_answers, read_answers
from cbda.annotate.brush_rle import brush_rle_to_mask, mask_to_brush_rle
from cbda.annotate.mask_rle import decode_cvat_rle, encode_cvat_rle, format_cvat_rle
from cbda.errors import InputError, StateError
from cbda.selection import Selection
from cbda.state import ActiveLabelState

H, W, C, N = 20, 30, 4, 5
NAMES = ["road", "car", "tree", "sky"]


def _sel(ids, ys, xs, classes, round_index=1, radius=1, strategy="da"):
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return Selection(image_ids=t(ids), ys=t(ys), xs=t(xs), scores=torch.arange(len(ids), 0, -1).float(),
                     classes=t(classes), radius=radius, image_size=(H, W), round_index=round_index,
                     strategy=strategy)


@pytest.fixture
def setup(tmp_path):
    """A state with round 1 labelled and round 2 pending, and the image files."""
    root = tmp_path / "data" / "leftImg8bit" / "train"
    paths = []
    rng = np.random.default_rng(0)
    for i in range(N):
        p = root / ("cityA" if i < 3 else "cityB") / f"img{i}_leftImg8bit.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    state = ActiveLabelState((H, W), C, N)
    state.record(_sel([0, 1], [5, 5], [5, 5], [0, 1], 1))
    state.label_from_ground_truth(lambda i: np.zeros((H, W), np.uint8), 1)
    # round 2: a corner window (clipped), an edge window, two in image 3
    state.record(_sel([2, 0, 3, 3], [0, 10, 19, 4], [0, 29, 10, 20], [2, 3, 1, 0], 2))
    return state, paths, tmp_path


def _truth(rng=None):
    """What the human paints: a full (H, W) train-id map per image."""
    rng = rng or np.random.default_rng(5)
    return {i: rng.integers(0, C, (H, W)).astype(np.uint8) for i in range(N)}


def _expected_labels(state, r, truth):
    exp = ActiveLabelState.from_bytes(state.to_bytes())
    exp.label_from_ground_truth(lambda i: truth[i], r)
    return exp.labels(r)


def _ls_answer(tasks, truth, cancelled=()):
    """A Label Studio JSON export: each task answered with brush regions of the truth."""
    out = []
    for k, task in enumerate(tasks):
        i = task["data"]["cbda_image_id"]
        results = []
        for c in range(C):
            m = truth[i] == c
            results.append({"from_name": "label", "to_name": "image", "type": "brushlabels",
                            "original_width": W, "original_height": H, "image_rotation": 0,
                            "value": {"format": "rle", "rle": mask_to_brush_rle(m), "brushlabels": [NAMES[c]]}})
        out.append({"id": 100 + k, "data": task["data"], "predictions": task["predictions"],
                    "annotations": [{"id": 7, "result": [], "was_cancelled": False},
                                    {"id": 9, "result": results, "was_cancelled": i in cancelled}]})
    return out


def test_labelstudio_export_content(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    config = open(files["labelstudio"][0]).read()
    assert "<BrushLabels" in config and all(f'value="{n}"' in config for n in NAMES)
    tasks = json.load(open(files["labelstudio"][1]))
    assert [t["data"]["cbda_image_id"] for t in tasks] == [0, 2, 3]
    t0 = tasks[0]
    assert t0["data"]["cbda_name"] == "cityA/img0_leftImg8bit.png"
    assert t0["data"]["image"] == "/data/local-files/?d=train/cityA/img0_leftImg8bit.png"
    assert t0["data"]["cbda_windows"] == [[9, 28, 11, 29]]  # clipped at the right border
    (res,) = t0["predictions"][0]["result"]
    assert res["value"]["brushlabels"] == ["sky"] and (res["original_height"], res["original_width"]) == (H, W)
    m = brush_rle_to_mask(res["value"]["rle"], H, W)
    want = np.zeros((H, W), bool)
    want[9:12, 28:30] = True
    assert np.array_equal(m, want)  # exactly the picked pixels
    t3 = tasks[2]
    assert sorted(r["value"]["brushlabels"][0] for r in t3["predictions"][0]["result"]) == ["car", "road"]


def test_labelstudio_urls_and_per_pixel_predictions(setup):
    state, paths, tmp = setup
    pred = np.full((4, 3, 3), 1, np.uint8)
    pred[:, 0, 0] = 2
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES,
                         predicted=pred, image_url="http://127.0.0.1:8081/imgs/")
    tasks = json.load(open(files["labelstudio"][1]))
    assert tasks[1]["data"]["image"] == "http://127.0.0.1:8081/imgs/cityA/img2_leftImg8bit.png"
    (r_car,) = [r for r in tasks[1]["predictions"][0]["result"] if r["value"]["brushlabels"] == ["car"]]
    m = brush_rle_to_mask(r_car["value"]["rle"], H, W)
    # the window at (0, 0) is clipped to 2x2: its [0, 0] (tree) lies outside the image
    assert m.sum() == 4 and m[:2, :2].all()
    assert [r["value"]["brushlabels"] for r in tasks[1]["predictions"][0]["result"]] == [["car"]]
    with pytest.raises(InputError, match="predicted"):
        export_round(state, 2, tmp / "out2", ["labelstudio"], images=paths, class_names=NAMES,
                     predicted=np.zeros((3, 3, 3), np.uint8))
    assert not (tmp / "out2").exists()  # validated before writing anything


def test_labelstudio_round_trip_pixel_for_pixel(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    truth = _truth()
    export = tmp / "ls_export.json"
    export.write_text(json.dumps(_ls_answer(json.load(open(files["labelstudio"][1])), truth)))
    rep = import_answers(state, export, images=paths, class_names=NAMES)
    assert not state.labels_pending(2)
    assert np.array_equal(state.labels(2), _expected_labels(state, 2, truth))
    for i in range(N):  # outside the windows everything stays 255
        assert (state.label_map(i)[~state.labelled_mask(i).numpy()] == 255).all()
    assert rep.windows == 4 and rep.unlabelled_windows == 0 and rep.images == 3


def test_skipped_task_counts_unlabelled_windows(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    export = tmp / "ls_export.json"
    export.write_text(json.dumps(_ls_answer(json.load(open(files["labelstudio"][1])), _truth(), cancelled={3})))
    r, labels, rep = read_answers(state, export, images=paths, class_names=NAMES)
    assert r == 2 and rep.unlabelled_windows == 2 and "2 windows left unlabelled" in rep.summary()
    assert (labels[2:] == 255).all() and (labels[:2] != 255).any()


@pytest.mark.parametrize("mutate, message", [
    (lambda ex: ex[1]["annotations"][1]["result"][0]["value"].update(brushlabels=["bus"]), "unknown class name 'bus'"),
    (lambda ex: ex[0]["annotations"][1]["result"][0].update(original_width=W + 2), "mask of size"),
    (lambda ex: ex[2]["data"].update(cbda_image_id=4), "had no picks"),
    (lambda ex: ex.pop(1), "have no task"),
    (lambda ex: ex[0]["annotations"].clear(), "has no annotation"),
    (lambda ex: ex[0]["data"].update(cbda_windows=[[0, 0, 2, 2]]), "differ from the picks"),
    (lambda ex: ex[0]["annotations"][1]["result"][0]["value"].update(rle=[1, 2, 3]), "ends early"),
    (lambda ex: ex[0]["annotations"][1]["result"].append({"type": "rectanglelabels", "value": {}}), "not supported"),
])
def test_bad_labelstudio_files_record_nothing(setup, mutate, message):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    ex = _ls_answer(json.load(open(files["labelstudio"][1])), _truth())
    mutate(ex)
    (tmp / "bad.json").write_text(json.dumps(ex))
    before = state.to_bytes()
    with pytest.raises(InputError, match=message) as e:
        import_answers(state, tmp / "bad.json", images=paths, class_names=NAMES)
    if message not in ("have no task", "had no picks"):
        assert "task" in str(e.value) and "image" in str(e.value)  # names the task and the image
    assert state.to_bytes() == before


def test_labelled_round_needs_replace(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    export = tmp / "ls.json"
    export.write_text(json.dumps(_ls_answer(json.load(open(files["labelstudio"][1])), _truth())))
    import_answers(state, export, images=paths, class_names=NAMES)
    with pytest.raises(StateError, match="already has labels"):
        import_answers(state, export, images=paths, class_names=NAMES)
    import_answers(state, export, images=paths, class_names=NAMES, replace=True)


def _cvat_answer(xml_bytes, truth, drop_first_mask_of=None):
    root = ET.fromstring(xml_bytes)
    for img in root.iter("image"):
        for m in list(img):
            img.remove(m)
        i = int(img.get("name")[len("cityA/img"):].split("_")[0]) if "cityA" in img.get("name") else \
            int(img.get("name")[len("cityB/img"):].split("_")[0])
        for c in range(C):
            m = truth[i] == c
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            ET.SubElement(img, "mask", {"label": NAMES[c], "source": "manual", "occluded": "0", "z_order": "0",
                                        "rle": format_cvat_rle(encode_cvat_rle(m[y0:y1 + 1, x0:x1 + 1])),
                                        "left": str(x0), "top": str(y0), "width": str(x1 - x0 + 1),
                                        "height": str(y1 - y0 + 1)})
    return ET.tostring(root)


def test_cvat_export_and_round_trip(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["cvat"], images=paths, class_names=NAMES)
    xml = open(files["cvat"][0], "rb").read()
    root = ET.fromstring(xml)
    assert root.find("version").text == "1.1"
    assert [l.find("type").text for l in root.iter("label")] == ["mask"] * C
    imgs = root.findall("image")
    assert [i.get("name") for i in imgs] == ["cityA/img0_leftImg8bit.png", "cityA/img2_leftImg8bit.png",
                                             "cityB/img3_leftImg8bit.png"]
    m = imgs[0].find("mask")
    assert (m.get("label"), m.get("left"), m.get("top"), m.get("width"), m.get("height")) == ("sky", "28", "9", "2", "3")
    assert decode_cvat_rle([int(v) for v in m.get("rle").split(",")], 2, 3).all()
    truth = _truth()
    (tmp / "cvat_export.xml").write_bytes(_cvat_answer(xml, truth))
    import_answers(state, tmp / "cvat_export.xml", images=paths, class_names=NAMES)
    assert np.array_equal(state.labels(2), _expected_labels(state, 2, truth))


def test_cvat_errors_name_the_image(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["cvat"], images=paths, class_names=NAMES)
    xml = _cvat_answer(open(files["cvat"][0], "rb").read(), _truth()).decode()
    before = state.to_bytes()
    for bad, message in [(xml.replace('label="car"', 'label="bus"', 1), "unknown class name 'bus'"),
                         (xml.replace(f'width="{W}"', f'width="{W * 2}"', 1), "mask of size"),
                         (xml.replace("cityA/img2_", "cityB/img4_"), "had no picks"),
                         (xml.replace("cityA/img2_", "cityA/img9_"), "not an image of the target set"),
                         (xml.replace("<mask ", "<polygon ", 1).replace("</mask>", "</polygon>", 1), "not supported")]:
        (tmp / "bad.xml").write_text(bad)
        with pytest.raises(InputError, match=message) as e:
            import_answers(state, tmp / "bad.xml", images=paths, class_names=NAMES)
        assert "image '" in str(e.value)
    assert state.to_bytes() == before


def test_previews_and_other_formats(setup):
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["preview", "png", "json"], images=paths, class_names=NAMES)
    pre = files["preview"]
    assert [os.path.relpath(p, tmp / "out" / "previews") for p in pre] == [
        "cityA/img0_leftImg8bit.png", "cityA/img2_leftImg8bit.png", "cityB/img3_leftImg8bit.png", "contact_sheet.png"]
    im = np.asarray(Image.open(pre[0]))
    assert im.shape == (H, W, 3)
    assert (im[8, 27:30] == 255).all()  # the outline above the (10, 29) window
    assert Image.open(pre[-1]).size[0] > 3 * 192
    assert len(files["png"]) == 4 and json.load(open(files["json"][0]))[0]["name"].startswith("cityA/")
    assert os.path.relpath(files["png"][0], tmp / "out" / "png") == os.path.join(
        "gtMask", "train", "cityA", "img0_gtFine_labelIds.png")  # RIPU's layout


def test_images_not_at_the_label_size_are_served_resized(setup):
    state, paths, tmp = setup
    for p in paths:
        Image.open(p).resize((W * 2, H * 2)).save(p)
    files = export_round(state, 2, tmp / "out", ["labelstudio", "cvat"], images=paths, class_names=NAMES)
    tasks = json.load(open(files["labelstudio"][1]))
    copy = tmp / "out" / "images" / "cityA" / "img0_leftImg8bit.png"
    assert Image.open(copy).size == (W, H)
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/cityA/img0_leftImg8bit.png"


def test_export_refuses_a_foreign_folder(setup):
    state, paths, tmp = setup
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not written by"):
        export_round(state, 2, tmp / "mine", ["labelstudio"], images=paths, class_names=NAMES)
    assert os.listdir(tmp / "mine") == ["notes.txt"]
    export_round(state, 2, tmp / "ours", ["labelstudio"], images=paths, class_names=NAMES)
    export_round(state, 2, tmp / "ours", ["cvat"], images=paths, class_names=NAMES)  # ours: reusable
    with pytest.raises(InputError, match="format"):
        export_round(state, 2, tmp / "ours", ["yolo"], images=paths, class_names=NAMES)
    with pytest.raises(InputError, match="class_names"):
        export_round(state, 2, tmp / "ours", ["cvat"], images=paths, class_names=NAMES[:2])


def test_whole_image_round_round_trip(tmp_path):
    root = tmp_path / "imgs"
    paths = []
    for i in range(3):
        p = root / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(p)
        paths.append(p)
    state = ActiveLabelState((H, W), C, 3)
    m1 = [-1, -1]
    state.record(_sel([2, 0], m1, m1, m1, 1, radius=0, strategy="image"))
    pred = np.random.default_rng(1).integers(0, C, (2, H, W)).astype(np.uint8)
    files = export_round(state, 1, tmp_path / "out", ["labelstudio", "cvat"], images=paths, class_names=NAMES,
                         predicted=pred)
    tasks = json.load(open(files["labelstudio"][1]))
    assert [t["data"]["cbda_windows"] for t in tasks] == [[[0, 0, H - 1, W - 1]]] * 2
    # accept the pre-annotation as it is: the labels become the predictions
    ex = [dict(t, id=k, annotations=[{"id": 1, "result": t["predictions"][0]["result"]}]) for k, t in enumerate(tasks)]
    (tmp_path / "ls.json").write_text(json.dumps(ex))
    import_answers(state, tmp_path / "ls.json", images=paths, class_names=NAMES)
    assert np.array_equal(state.labels(1), pred)
    # CVAT with bare file names, as a task made from uploaded files lists them
    xml = open(files["cvat"][0]).read().replace('name="2.png"', 'name="./2.png"')
    (tmp_path / "c.xml").write_text(xml)
    r, labels, _ = read_answers(state, tmp_path / "c.xml", images=paths, class_names=NAMES, round_index=1)
    assert np.array_equal(labels, pred)


def test_labelstudio_literal_groups_are_read(setup):
    """Label Studio's own encoder writes single values as literal groups; the import reads them."""
    state, paths, tmp = setup
    files = export_round(state, 2, tmp / "out", ["labelstudio"], images=paths, class_names=NAMES)
    truth = _truth()
    ex = _ls_answer(json.load(open(files["labelstudio"][1])), truth)

    def literal_stream(mask):  # every value as its own literal group of length 1
        vals = np.repeat(mask.astype(np.uint8).ravel() * 255, 4)
        bits = format(vals.size, "032b") + format(7, "05b") + "".join(format(w - 1, "04b") for w in (3, 4, 8, 16))
        bits += "".join("0" + "00" + "000" + format(int(v), "08b") for v in vals)
        bits += "0" * (-len(bits) % 8)
        return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]

    for t in ex:
        i = t["data"]["cbda_image_id"]
        for res in t["annotations"][1]["result"]:
            c = NAMES.index(res["value"]["brushlabels"][0])
            res["value"]["rle"] = literal_stream(truth[i] == c)
    (tmp / "lit.json").write_text(json.dumps(ex))
    import_answers(state, tmp / "lit.json", images=paths, class_names=NAMES)
    assert np.array_equal(state.labels(2), _expected_labels(state, 2, truth))


def test_cvat_xml_masks_decode_with_cvat_sdk(setup):
    """Every <mask> of the export, in CVAT's API form, decodes with cvat-sdk to exactly the
    predicted pixels of its class."""
    masks = pytest.importorskip("cvat_sdk.masks")
    state, paths, tmp = setup
    pred = np.random.default_rng(3).integers(0, C, (4, 3, 3)).astype(np.uint8)
    files = export_round(state, 2, tmp / "out", ["cvat"], images=paths, class_names=NAMES, predicted=pred)
    from cbda.annotate import RoundWindows
    win = RoundWindows(state, 2)
    by_name = {p.relative_to(tmp / "data" / "leftImg8bit" / "train").as_posix(): i for i, p in enumerate(paths)}
    n = 0
    for img in ET.parse(files["cvat"][0]).getroot().iter("image"):
        want = win.paint(by_name[img.get("name")], pred)
        for m in img.iter("mask"):
            left, top, w, h = (int(m.get(k)) for k in ("left", "top", "width", "height"))
            points = [int(v) for v in m.get("rle").split(",")] + [left, top, left + w - 1, top + h - 1]
            got = masks.decode_mask(points, image_width=int(img.get("width")), image_height=int(img.get("height")))
            assert np.array_equal(got, want == NAMES.index(m.get("label")))
            n += 1
    assert n >= 3
