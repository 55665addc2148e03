import math

import numpy as np
import torch

from cbda.train.evaluate import confusion_matrix, iou_from_confusion, summarize
from cbda.train.losses import boundary_mask, cross_entropy, local_consistency, negative_learning


def test_target_ce_is_skipped_without_labels():
    logits = torch.randn(2, 4, 5, 5)
    assert cross_entropy(logits, torch.full((2, 5, 5), 255)) is None
    lab = torch.full((2, 5, 5), 255)
    lab[0, 1, 1] = 2
    ref = -torch.log_softmax(logits[0, :, 1, 1], 0)[2]
    assert torch.allclose(cross_entropy(logits, lab), ref)


def test_boundary_and_local_consistency():
    lab = torch.zeros(1, 6, 6, dtype=torch.long)
    lab[:, :, 3:] = 1
    b = boundary_mask(lab)
    assert b[0, :, 2:4].all() and not b[0, :, :2].any() and not b[0, :, 4:].any()
    flat = torch.zeros(1, 3, 6, 6)
    assert float(local_consistency(flat, lab)) < 1e-6
    assert local_consistency(torch.randn(1, 3, 6, 6) * 5, lab) > 0
    assert local_consistency(torch.randn(1, 3, 6, 6), torch.zeros(1, 6, 6, dtype=torch.long)) == 0


def test_negative_learning_value():
    logits = torch.log(torch.tensor([0.9, 0.07, 0.02, 0.01])).view(1, 4, 1, 1)
    expect = -(math.log(1 - 0.02 + 1e-6) + math.log(1 - 0.01 + 1e-6)) / 2
    assert abs(float(negative_learning(logits)) - expect) < 1e-5


def test_confusion_iou_summary():
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    conf = confusion_matrix(pred, gt, 4)
    assert conf.sum() == 5 and conf[0, 1] == 1 and conf[2, 0] == 1
    iou = iou_from_confusion(conf)
    assert np.allclose(iou[:3], [1 / 3, 2 / 3, 0]) and np.isnan(iou[3])
    s = summarize(conf.numpy(), ["a", "b", "c", "d"])
    assert abs(s["miou"] - 100 / 3) < 1e-9 and s["min_iou"] == 0 and s["min_class"] == "c"
    assert s["per_class_iou"]["d"] is None and s["class_pixels"] == {"a": 2, "b": 2, "c": 1, "d": 0}
