"""The reference scores against explicit loops and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbda.reference import reference_score, upsample_logits, window_mean
from cbda.scores import ScoreSpec, mix32, random_scores
from helpers import brute_scores, random_logits


@pytest.mark.parametrize("heuristic", ["ripu", "entropy", "margin", "least_confidence"])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("c", [2, 5])
def test_scores_match_loops(heuristic, radius, c):
    logits = random_logits(2, c, 5, 7, seed=radius * 10 + c)
    scores, labels = reference_score(logits, ScoreSpec(heuristic, radius))
    want, want_lab = brute_scores(logits, heuristic, radius)
    assert scores.dtype == torch.float32 and labels.dtype == torch.int64
    assert np.array_equal(labels.numpy(), want_lab)
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-5, atol=1e-6)


def test_ripu_pixel_matches_loops():
    logits = random_logits(1, 3, 6, 40, seed=3)
    scores, _ = reference_score(logits, ScoreSpec("ripu_pixel", 0))
    want, _ = brute_scores(logits, "ripu_pixel", 0)
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-5, atol=1e-6)


def test_pure_window_is_slightly_negative():
    # one class everywhere: q = 1 -> P = -ln(1 + 1e-6)/ln C < 0, U > 0, so A < 0
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 1] = 2.0
    scores, labels = reference_score(logits, ScoreSpec("ripu", 1))
    assert (labels == 1).all()
    assert (scores < 0).all()
    p = torch.softmax(logits[0, :, 0, 0].double(), 0)
    e = float(-(p * torch.log(p + 1e-6)).sum() / math.log(3))
    # float32 arithmetic, as every backend does: 1 + 1e-6 rounds to 1 + 2^-20
    log_q = float(np.log(np.float32(1.0) + np.float32(1e-6)))
    expected = -log_q / math.log(3) * e
    assert scores[0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_hand_case_two_classes_r1():
    # 1x3 image, labels [0, 1, 1]; centre window = all 3 pixels: q = (1/3, 2/3)
    logits = torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 1.0, 3.0]]]])
    scores, labels = reference_score(logits, ScoreSpec("ripu", 1))
    assert labels.tolist() == [[[0, 1, 1]]]
    q = np.array([1 / 3, 2 / 3])
    imp = -(q * np.log(q + 1e-6)).sum() / math.log(2)
    p = torch.softmax(logits[0, :, 0, :].double(), 0).numpy()
    e = -(p * np.log(p + 1e-6)).sum(0) / math.log(2)
    assert scores[0, 0, 1].item() == pytest.approx(imp * e.mean(), rel=1e-5)
    # left corner: window = pixels 0, 1 (n = 2): q = (1/2, 1/2)
    imp0 = -2 * 0.5 * math.log(0.5 + 1e-6) / math.log(2)
    assert scores[0, 0, 0].item() == pytest.approx(imp0 * e[:2].mean(), rel=1e-5)


def test_argmax_ties_take_lowest_class():
    logits = torch.zeros(1, 4, 2, 2)
    _, labels = reference_score(logits, ScoreSpec("entropy", 0))
    assert (labels == 0).all()


def test_upsampling_is_bilinear_align_corners():
    logits = random_logits(2, 3, 4, 5, seed=1)
    up = upsample_logits(logits, (9, 13))
    ref = F.interpolate(logits.double(), size=(9, 13), mode="bilinear", align_corners=True)
    torch.testing.assert_close(up.double(), ref, rtol=1e-6, atol=1e-6)
    # align_corners=True keeps the corners exactly
    assert torch.equal(up[..., 0, 0], logits[..., 0, 0])
    assert torch.equal(up[..., -1, -1], logits[..., -1, -1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_scored_in_float32(dtype):
    logits = random_logits(1, 4, 6, 6, seed=2, dtype=dtype)
    s_lo, l_lo = reference_score(logits, ScoreSpec("ripu", 1, (11, 11)))
    s_hi, l_hi = reference_score(logits.float(), ScoreSpec("ripu", 1, (11, 11)))
    assert torch.equal(s_lo, s_hi) and torch.equal(l_lo, l_hi)


def test_window_mean_large_radius_is_global_mean():
    x = torch.rand(1, 2, 3, 4)
    out = window_mean(x, 10)
    torch.testing.assert_close(out, x.mean(dim=(2, 3), keepdim=True).expand_as(x))


def test_random_scores_are_deterministic_and_uniform():
    ids = torch.tensor([0, 7, 2**40 + 3])
    a = random_scores(ids, 16, 16, seed=5)
    b = random_scores(ids, 16, 16, seed=5)
    c = random_scores(ids, 16, 16, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= 0).all() and (a < 1).all()
    assert not torch.equal(a[0], a[1])
    big = random_scores(torch.arange(64), 32, 32, seed=1)
    assert abs(big.mean().item() - 0.5) < 0.01


def test_mix32_known_values():
    # murmur3 fmix32 reference values, independently known
    assert int(mix32(torch.tensor(0))) == 0
    assert int(mix32(torch.tensor(1))) == 0x514E28B7
    assert int(mix32(torch.tensor(0xFFFFFFFF))) == 0x81F16F39
