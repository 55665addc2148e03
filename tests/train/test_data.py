import struct
import zlib

import numpy as np
import pytest
import torch

from cbda.train.data import GTAV, Cityscapes, DatasetNotFoundError, Synthia
from cbda.train.data import imageio, labels, synthetic
from cbda.train.data.sampler import ClassBalancedSampler, ShuffledStream, class_presence


def test_label_maps_match_the_protocol():
    lut = labels.cityscapes_lut(19)
    assert [int(lut[i]) for i in (7, 8, 11, 26, 31, 33)] == [0, 1, 2, 13, 16, 18]
    assert lut[0] == lut[1] == lut[255] == 255
    lut16 = labels.cityscapes_lut(16)
    assert lut16[22] == lut16[27] == lut16[31] == 255          # terrain, truck, train
    assert lut16[23] == 9 and lut16[33] == 15                    # sky, bicycle
    syn = labels.synthia_lut(16)
    assert [int(syn[i]) for i in (3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11)] == list(range(16))
    assert syn[0] == syn[13] == 255
    assert labels.class_names(16)[9] == "sky"


def test_datasets_read_the_published_layouts(tiny_data):
    ds = GTAV(tiny_data["gtav"], size=(16, 32))
    item = ds[0]
    assert item["image"].shape == (3, 16, 32) and item["image"].dtype == torch.uint8
    assert item["label"].shape == (16, 32) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= set(range(19)) | {255}
    syn = Synthia(tiny_data["synthia"], size=None, num_classes=16)
    gt = syn.read_gt(0)
    assert gt.shape == (32, 64) and gt.max() < 16 or (gt == 255).any()
    assert set(np.unique(gt)) - {255} and set(np.unique(gt)) <= set(range(16)) | {255}
    cs = Cityscapes(tiny_data["cityscapes"], "val", size=(16, 32), label_size=None)
    assert len(cs) == 4 and cs[1]["label"].shape == (32, 64) and cs.native_label_size() == (32, 64)
    assert (cs.read_gt(0)[-1] == 255).all()  # the generated ego-vehicle strip is void


def test_same_scene_through_gtav_and_synthia_layouts(tiny_data):
    g = GTAV(tiny_data["gtav"], num_classes=19).read_gt(2)
    s = Synthia(tiny_data["synthia"], num_classes=19).read_gt(2)
    shared = np.isin(g, labels.SYNTHIA16_FROM_19)
    assert (g[shared] == s[shared]).all() and (s[~shared] == 255).all()


def test_missing_dataset_names_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"leftImg8bit.*data.target_root"):
        Cityscapes(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "gta" / "images")):
        GTAV(tmp_path / "gta")
    with pytest.raises(DatasetNotFoundError, match="RGB"):
        Synthia(tmp_path / "syn")


def _png16_with_filters(arr, filters):
    h, w, c = arr.shape
    bpp = 2 * c
    raw = arr.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    out, prev = [], np.zeros(w * bpp, np.int32)
    for y, f in enumerate(filters):
        cur = raw[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) >> 1
        else:
            p = left + prev - ul
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        out.append(bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes())
        prev = cur

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


def test_png16_roundtrip_all_filters_both_decoders(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    data = _png16_with_filters(arr, [0, 1, 2, 3, 4])
    (tmp_path / "f.png").write_bytes(data)
    assert (imageio.read_png16(tmp_path / "f.png") == arr).all()
    assert (imageio._read_png16_numpy(data) == arr).all()
    imageio.write_png16(tmp_path / "w.png", arr)
    assert (imageio.read_png16(tmp_path / "w.png") == arr).all()


def test_generator_is_deterministic_and_long_tailed():
    a1, l1 = synthetic.sample(7, "train", 3, (48, 96), "real")
    a2, l2 = synthetic.sample(7, "train", 3, (48, 96), "real")
    assert (a1 == a2).all() and (l1 == l2).all()
    hist = np.zeros(256)
    for i in range(40):
        hist += np.bincount(synthetic.sample(0, "source", i, (48, 96), "synthetic")[1].ravel(), minlength=256)
    share = hist[:19] / hist[:19].sum()
    assert share[0] > 0.1 and share[2] > 0.1                 # road, building dominate
    assert 0 < share[5] < 0.02 and share[12] < 0.005          # thin poles, small riders
    assert (share > 0).sum() >= 16


def test_class_balanced_sampler_favours_rare_classes_and_replays():
    presence = [[0, 2]] * 50 + [[0, 2, 16]]  # one image holds the rare class 16
    s = ClassBalancedSampler(presence, 19, seed=1)
    draws = [s.next() for _ in range(300)]
    assert draws.count(50) > 30  # uniform sampling would give ~6
    t = ClassBalancedSampler(presence, 19, seed=1)
    t.skip_to(120)
    assert [t.next() for _ in range(180)] == draws[120:]


def test_shuffled_stream_epochs_and_skip():
    s = ShuffledStream(5, seed=2)
    seq = [s.next() for _ in range(15)]
    assert sorted(seq[:5]) == list(range(5)) and seq[:5] != seq[5:10]
    t = ShuffledStream(5, seed=2)
    t.skip_to(7)
    assert [t.next() for _ in range(8)] == seq[7:]


def test_class_presence_cache(tmp_path):
    gts = [np.array([[0, 1], [255, 1]], np.uint8), np.array([[18, 18], [18, 255]], np.uint8)]
    calls = []

    def read(i):
        calls.append(i)
        return gts[i]
    cache = tmp_path / "c.json"
    assert class_presence(2, read, 19, cache, ["a", "b"]) == [[0, 1], [18]]
    assert class_presence(2, read, 19, cache, ["a", "b"]) == [[0, 1], [18]] and len(calls) == 2
    class_presence(2, read, 19, cache, ["a", "c"])
    assert len(calls) == 4
