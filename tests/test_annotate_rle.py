"""The two RLE codecs: round trips, hand-built streams, and the tools' own libraries.

cvat-sdk is a light test dependency (in the `test` extra). label-studio-sdk pulls ~70
packages (pandas, nltk, opencv, black), so it is not: its brush converter is used in-process
when importable, else through the Python named by CBDA_LABEL_STUDIO_PYTHON (the CI script's
Label Studio venv), else those tests skip.
"""
import json
import os
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cbda.annotate import (brush_rle_to_mask, decode_brush_rle, decode_cvat_rle, encode_brush_rle,
                           encode_cvat_rle, mask_to_brush_rle)
from cbda.errors import InputError


def _bits(fields):
    s = "".join(format(v, f"0{w}b") for v, w in fields)
    s += "0" * (-len(s) % 8)
    return [int(s[i:i + 8], 2) for i in range(0, len(s), 8)]


_HEADER = lambda n: [(n, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4)]  # noqa: E731


def test_brush_encode_matches_hand_built_stream():
    # a run of three 0s, then a run of one 255: flag 1, width index 0 (3 bits), length-1, value
    want = _bits(_HEADER(4) + [(1, 1), (0, 2), (2, 3), (0, 8), (1, 1), (0, 2), (0, 3), (255, 8)])
    assert encode_brush_rle(np.array([0, 0, 0, 255], np.uint8)) == want


def test_brush_decode_reads_literal_groups_and_every_width():
    # literal group of 3 values (width index 1: 4 bits), a 200-long run (index 2: 8 bits),
    # a 1000-long run (index 3: 16 bits)
    stream = _bits(_HEADER(1203) + [(0, 1), (1, 2), (2, 4), (5, 8), (6, 8), (7, 8), (1, 1), (2, 2), (199, 8),
                                    (9, 8), (1, 1), (3, 2), (999, 16), (4, 8)])
    out = decode_brush_rle(stream)
    assert out[:3].tolist() == [5, 6, 7] and (out[3:203] == 9).all() and (out[203:] == 4).all()
    assert out.shape == (1203,)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 70000)), min_size=0, max_size=6))
def test_brush_round_trip_runs_of_any_length(runs):
    a = np.concatenate([np.full(n, v, np.uint8) for v, n in runs]) if runs else np.zeros(0, np.uint8)
    assert np.array_equal(decode_brush_rle(encode_brush_rle(a)), a)


def test_brush_mask_round_trip_and_size_check():
    rng = np.random.default_rng(0)
    m = rng.random((13, 17)) < 0.3
    rle = mask_to_brush_rle(m)
    assert np.array_equal(brush_rle_to_mask(rle, 13, 17), m)
    with pytest.raises(InputError, match="another size"):
        brush_rle_to_mask(rle, 17, 13 + 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**31))
def test_mask_fast_path_equals_encoding_the_rgba_buffer(h, w, p, seed):
    m = np.random.default_rng(seed).random((h, w)) < p
    assert mask_to_brush_rle(m) == encode_brush_rle(np.repeat(m.astype(np.uint8).ravel() * 255, 4))


def test_brush_decode_rejects_truncated_and_bad_input():
    rle = mask_to_brush_rle(np.ones((4, 4), bool) ^ np.eye(4, dtype=bool))
    with pytest.raises(InputError, match="ends early"):
        decode_brush_rle(rle[: len(rle) // 2])
    with pytest.raises(InputError):
        decode_brush_rle([1, 2, 300])


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31))
def test_cvat_round_trip(h, w, seed):
    m = np.random.default_rng(seed).random((h, w)) < 0.5
    rle = encode_cvat_rle(m)
    assert sum(rle) == h * w and np.array_equal(decode_cvat_rle(rle, w, h), m)


def test_cvat_decode_checks_the_box():
    with pytest.raises(InputError, match="add up"):
        decode_cvat_rle([1, 2], 2, 2)
    with pytest.raises(InputError):
        decode_cvat_rle([-1, 5], 2, 2)


def test_cvat_matches_cvat_sdk():
    masks = pytest.importorskip("cvat_sdk.masks")
    rng = np.random.default_rng(1)
    for trial in range(50):
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        full = np.zeros((h + 4, w + 5), bool)
        full[2:2 + h, 3:3 + w] = rng.random((h, w)) < rng.random()
        x1, y1, x2, y2 = 3, 2, 3 + w, 2 + h
        theirs = masks.encode_mask(full, bbox=[x1, y1, x2, y2])
        assert encode_cvat_rle(full[y1:y2, x1:x2]) == theirs[:-4]
        assert theirs[-4:] == [x1, y1, x2 - 1, y2 - 1]
        ours = encode_cvat_rle(full[y1:y2, x1:x2]) + [x1, y1, x2 - 1, y2 - 1]
        assert np.array_equal(masks.decode_mask(ours, image_width=w + 5, image_height=h + 4), full)


# ---------------------------------------------------------------- Label Studio's converter

_LS_SCRIPT = r"""
import json, sys
import numpy as np
try:
    from label_studio_sdk.converter import brush
except ImportError:
    from label_studio_converter import brush
job = json.load(sys.stdin)
out = {"decoded": [brush.decode_rle(r).tolist() for r in job["ours"]],
       "encoded": [list(map(int, brush.encode_rle(np.array(a, dtype=np.uint8)))) for a in job["arrays"]]}
print(json.dumps(out))
"""


def _label_studio_brush(ours: list, arrays: list) -> dict:
    try:
        try:
            from label_studio_sdk.converter import brush
        except ImportError:
            from label_studio_converter import brush
    except ImportError:
        py = os.environ.get("CBDA_LABEL_STUDIO_PYTHON")
        if not py:
            pytest.skip("label-studio-sdk not importable and CBDA_LABEL_STUDIO_PYTHON not set")
        job = json.dumps({"ours": ours, "arrays": [a.tolist() for a in arrays]})
        res = subprocess.run([py, "-c", _LS_SCRIPT], input=job, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)
    return {"decoded": [brush.decode_rle(r).tolist() for r in ours],
            "encoded": [list(map(int, brush.encode_rle(a))) for a in arrays]}


def _brush_cases():
    rng = np.random.default_rng(2)
    masks = [np.zeros((5, 7), bool), np.ones((3, 3), bool), rng.random((31, 29)) < 0.2,
             np.pad(np.ones((3, 3), bool), ((40, 200), (10, 300)))]  # runs over 2^16 values
    arrays = [np.repeat(m.astype(np.uint8).ravel() * 255, 4) for m in masks]
    arrays.append(rng.integers(0, 256, 500).astype(np.uint8))  # no runs at all
    arrays.append(np.repeat(rng.integers(0, 4, 60), rng.integers(1, 300, 60)).astype(np.uint8))
    return arrays


def test_brush_matches_label_studio_converter():
    arrays = _brush_cases()
    ours = [encode_brush_rle(a) for a in arrays]
    got = _label_studio_brush(ours, arrays)
    for a, dec in zip(arrays, got["decoded"]):  # their decoder reads our streams
        assert np.array_equal(np.asarray(dec, np.uint8), a)
    for a, enc in zip(arrays, got["encoded"]):  # our decoder reads their streams
        assert np.array_equal(decode_brush_rle(enc), a)
