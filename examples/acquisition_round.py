"""A full CBDA acquisition run on generated logits, no dataset or GPU needed.

Generates a small "target set" whose ground truth is long-tailed (a few dominant classes,
many rare ones) and logits of a model that is right most of the time, then runs RA and CBDA
side by side for a few rounds with ActiveLabelState, labelling the picks from the ground
truth. It prints each round's picks and the labelled-class histogram and imbalance score:
class balancing should end much closer to uniform.

    python examples/acquisition_round.py [--images 16] [--rounds 3] [--budget 0.1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import cbda


def make_target_set(n: int, c: int, h: int, w: int, seed: int):
    """Long-tailed label maps (N, H, W) uint8 and low-resolution logits (N, C, h/4, w/4).

    A few frequent "stuff" classes tile each image in smooth blobs; the other classes are
    small rectangles whose number falls off geometrically with the class index, so that
    every class is present but most pixels belong to a handful. The "model" is right on
    most pixels, with noise that makes object borders and small things uncertain.
    """
    g = torch.Generator().manual_seed(seed)
    stuff = min(5, c)
    freq = torch.tensor([0.8**k for k in range(stuff)])
    fields = torch.rand(n, stuff, max(1, h // 16), max(1, w // 16), generator=g) * freq.view(1, stuff, 1, 1)
    gt = F.interpolate(fields, size=(h, w), mode="bicubic", align_corners=False).argmax(1)
    for k in range(stuff, c):
        count = max(1, int(round(6 * 0.8 ** (k - stuff))))
        for i in range(n):
            for _ in range(int(torch.randint(0, count + 1, (1,), generator=g))):
                bh = int(torch.randint(2, max(3, h // 10), (1,), generator=g))
                bw = int(torch.randint(2, max(3, w // 20), (1,), generator=g))
                y = int(torch.randint(0, h - bh + 1, (1,), generator=g))
                x = int(torch.randint(0, w - bw + 1, (1,), generator=g))
                gt[i, y : y + bh, x : x + bw] = k
    onehot = F.one_hot(gt, c).permute(0, 3, 1, 2).float()
    noise = torch.randn(n, c, h, w, generator=g) * 1.5
    logits = F.interpolate(4.0 * onehot + noise, size=(h // 4, w // 4), mode="bilinear", align_corners=True)
    return gt.to(torch.uint8), logits


def run(strategy: str, gt, logits, rounds: int, budget: float, backend: str, batch: int) -> list[float]:
    n, c = logits.shape[:2]
    h, w = gt.shape[1:]
    state = cbda.ActiveLabelState(image_size=(h, w), num_classes=c, num_images=n)
    scores = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        batches = ((list(range(i, min(i + batch, n))), logits[i : i + batch]) for i in range(0, n, batch))
        sel = cbda.select(batches, budget=budget, rounds=rounds, strategy=strategy, radius=1,
                          out_size=(h, w), state=state, backend=backend)
        dt = time.perf_counter() - t0
        state.label_from_ground_truth(lambda i: gt[i])
        hist = state.class_counts()
        imb = cbda.imbalance_score(hist)
        scores.append(imb)
        per_img = torch.bincount(sel.image_ids, minlength=n)
        print(f"  {strategy:5s} round {r}: {len(sel)} regions in {dt * 1000:.0f} ms "
              f"(per image min {int(per_img.min())} / max {int(per_img.max())}), "
              f"first picks {list(zip(sel.image_ids[:3].tolist(), sel.ys[:3].tolist(), sel.xs[:3].tolist()))}")
        shares = (hist.double() / hist.sum()).tolist()
        print(f"        labelled class shares: {' '.join(f'{s:.2f}' for s in shares)}  imbalance {imb:.3f}")
    return scores


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gt, logits = make_target_set(args.images, args.classes, *args.size, seed=args.seed)
    print(f"target set: {args.images} images, {args.classes} classes, logits {tuple(logits.shape[2:])} "
          f"-> labels {tuple(args.size)}; budget {args.budget:.0%} over {args.rounds} rounds")
    gt_shares = torch.bincount(gt.flatten().long(), minlength=args.classes).double()
    print(f"ground-truth imbalance {cbda.imbalance_score(gt_shares):.3f}")
    final = {}
    for strategy in ("ra", "cbda"):
        final[strategy] = run(strategy, gt, logits, args.rounds, args.budget, args.backend, args.batch)[-1]
    print(f"final imbalance score: RA {final['ra']:.3f}  CBDA {final['cbda']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
