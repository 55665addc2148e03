"""The Label Studio half of .ci/labelstudio_roundtrip.sh (run with the cbda Python).

  labelstudio_roundtrip.py annotate URL TOKEN WORK_DIR OUT_JSON
      project with our labelling config, local-file storage over the images, tasks.json
      (with predictions) imported through the HTTP API, each served image checked to be at
      the label size, one brush annotation submitted per task (the submitted maps saved in
      WORK_DIR/submitted.npz), the project exported as JSON to OUT_JSON.
  labelstudio_roundtrip.py check WORK_DIR
      after `cbda import`: the checkpoint's labels equal the submitted maps pixel for pixel
      inside the picked windows, 255 outside.
"""
import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def call(base, token, method, path, body=None, raw=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            payload = r.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}")
    return payload if raw else json.loads(payload or b"null")


def wait_up(base, token, seconds=600):
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            call(base, token, "GET", "/api/projects/")
            return time.time() - t0
        except (urllib.error.URLError, ConnectionError, SystemExit, OSError):
            time.sleep(2)
    raise SystemExit(f"Label Studio did not answer within {seconds} s")


def submitted_map(gt: np.ndarray, num_classes: int) -> np.ndarray:
    """What the "annotator" paints: the ground truth shifted by one class (so it differs from
    both the truth and the model's guesses), void kept void."""
    out = gt.copy()
    m = gt != 255
    out[m] = (gt[m].astype(np.int64) + 1) % num_classes
    return out


def annotate(base, token, work_dir, out_json):
    from PIL import Image

    from cbda.annotate.brush_rle import mask_to_brush_rle
    from cbda.train.config import load_config
    from cbda.train.data import Cityscapes
    from cbda.train.data.labels import class_names
    from cbda.train.trainer import resolve_roots

    work_dir = Path(work_dir)
    print(f"label studio up after {wait_up(base, token):.0f} s", flush=True)
    cfg = load_config(work_dir / "config.yaml")
    _, tgt = resolve_roots(cfg, work_dir)
    C = int(cfg["data"]["num_classes"])
    names = class_names(C)
    ds = Cityscapes(tgt, "train", None, C, with_labels=True)
    rd = work_dir / "annotate" / "round_0001" / "labelstudio"
    local = json.loads((rd.parent / "cbda_export.json").read_text())["labelstudio_local_files"]
    project = call(base, token, "POST", "/api/projects/", {"title": "cbda round 1",
                                                           "label_config": (rd / "config.xml").read_text()})
    pid = project["id"]
    call(base, token, "POST", "/api/storages/localfiles/", {"project": pid, "path": local["storage_path"],
                                                            "title": "images", "use_blob_urls": False})
    tasks_in = json.loads((rd / "tasks.json").read_text())
    res = call(base, token, "POST", f"/api/projects/{pid}/import", tasks_in)
    assert res.get("task_count", len(tasks_in)) == len(tasks_in), res
    listed = call(base, token, "GET", f"/api/tasks/?project={pid}&page_size=10000&fields=all")
    tasks = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(tasks) == len(tasks_in), (len(tasks), len(tasks_in))
    H, W = ds.read_gt(0).shape
    submitted = {}
    for k, task in enumerate(sorted(tasks, key=lambda t: t["id"])):
        i = task["data"]["cbda_image_id"]
        png = call(base, token, "GET", task["data"]["image"], raw=True)  # Label Studio serves the file
        with Image.open(io.BytesIO(png)) as im:
            assert im.size == (W, H), f"served image {im.size} != label grid {(W, H)}"
        m = submitted_map(ds.read_gt(i).astype(np.uint8), C)
        if k == 0:  # leave the first window of the first task unlabelled: allowed, reported
            y0, x0, y1, x1 = task["data"]["cbda_windows"][0]
            m[y0:y1 + 1, x0:x1 + 1] = 255
        submitted[str(i)] = m
        result = [{"from_name": "label", "to_name": "image", "type": "brushlabels", "origin": "manual",
                   "original_width": W, "original_height": H, "image_rotation": 0,
                   "value": {"format": "rle", "rle": mask_to_brush_rle(m == c), "brushlabels": [names[c]]}}
                  for c in np.unique(m[m != 255]).tolist()]
        call(base, token, "POST", f"/api/tasks/{task['id']}/annotations/",
             {"result": result, "was_cancelled": False, "lead_time": 1.0})
    np.savez(work_dir / "submitted.npz", **submitted)
    export = call(base, token, "GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true", raw=True)
    data = json.loads(export)
    assert len(data) == len(tasks_in) and all(t["annotations"] for t in data)
    assert all(t.get("predictions") for t in data), "the pre-annotations did not survive the import"
    Path(out_json).write_bytes(export)
    print(f"{len(data)} tasks annotated and exported to {out_json}", flush=True)


def check(work_dir):
    from cbda.train import checkpoint as ckpt
    from cbda.train.distributed import state_from_bytes

    work_dir = Path(work_dir)
    state = state_from_bytes(ckpt.load(ckpt.latest(work_dir / "checkpoints"))["state"])
    assert state.num_rounds == 1 and not state.labels_pending(1), state
    submitted = np.load(work_dir / "submitted.npz")
    n = 0
    for key in submitted.files:
        i = int(key)
        inside = state.labelled_mask(i).numpy()
        got = state.label_map(i)
        assert np.array_equal(got[inside], submitted[key][inside]), f"image {i}: labels differ from the submission"
        assert (got[~inside] == 255).all()
        n += int(inside.sum())
    assert sorted(int(k) for k in submitted.files) == state.labelled_image_ids().tolist()
    print(f"labels equal the submission pixel for pixel ({n} picked pixels in {len(submitted.files)} images)")


if __name__ == "__main__":
    if sys.argv[1] == "annotate":
        annotate(*sys.argv[2:6])
    elif sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        raise SystemExit(f"unknown step {sys.argv[1]!r}")
