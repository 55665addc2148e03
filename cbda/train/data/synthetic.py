"""The built-in dataset: procedurally generated street scenes in two visual domains.

A scene is a label map of the 19 Cityscapes classes drawn from a simple perspective street
layout (sky, buildings, road and sidewalks meeting at a vanishing point, vegetation, terrain),
with thin poles carrying lights and signs, cars, occasional trucks and buses, rare trains, people,
and small riders on bicycles or motorcycles, so class frequencies are long-tailed like
Cityscapes'. Two renderers give the domain gap:

- "synthetic" (source): flat shading from one palette, a tone per object, almost no noise;
- "real" (target): another palette, textures (window grids, road grain, foliage noise), an
  uneven lighting gradient, sensor noise, and an ego-vehicle strip at the bottom (void).

Everything is a deterministic function of (seed, split, index). The files are written in the
published layouts (GTAV, SYNTHIA-RAND-CITYSCAPES, Cityscapes) so they go through the same loaders
as the real datasets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import write_png16
from .labels import CITYSCAPES_LABEL_IDS, SYNTHIA16_FROM_19, SYNTHIA_LABEL_IDS

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
VOID = 255

_SOURCE_PALETTE = np.array([
    [128, 64, 128], [232, 35, 244], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32]], np.float32)


def _target_palette() -> np.ndarray:
    # A fixed, non-affine distortion of the source palette: channel mixing, gamma, and a
    # class-wise shift, so colour alone does not transfer across the domains.
    p = _SOURCE_PALETTE / 255.0
    mixed = p @ np.array([[0.55, 0.3, 0.15], [0.2, 0.6, 0.2], [0.25, 0.15, 0.6]], np.float32)
    mixed = mixed ** 1.4
    shift = np.random.default_rng(1234).uniform(-0.12, 0.12, size=(19, 3)).astype(np.float32)
    return np.clip(mixed + shift + 0.05, 0, 1) * 255.0


_TARGET_PALETTE = _target_palette()


def make_scene(rng: np.random.Generator, height: int, width: int):
    """One street scene. Returns (labels (H, W) uint8 train ids, tone (H, W) float32 in [-1, 1]
    per object, horizon row)."""
    H, W = height, width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    lab = np.full((H, W), SKY, np.uint8)
    tone = np.zeros((H, W), np.float32)

    def paint(mask, cls, t=None):
        lab[mask] = cls
        tone[mask] = rng.uniform(-1, 1) if t is None else t

    h0 = H * rng.uniform(0.3, 0.42)                 # horizon
    vx = W * rng.uniform(0.4, 0.6)                   # vanishing point x
    below = yy > h0
    depth = np.clip((yy - h0) / (H - h0), 0, 1)      # 0 at the horizon, 1 at the bottom row
    half_road = W * rng.uniform(0.35, 0.6) * depth
    half_walk = half_road + W * rng.uniform(0.15, 0.3) * depth

    # Background above and around the street: buildings with gaps of sky or trees.
    x = 0.0
    while x < W:
        bw = W * rng.uniform(0.08, 0.25)
        top = h0 - H * rng.uniform(0.12, 0.42)
        kind = rng.choice([BUILDING, VEGETATION, SKY], p=[0.62, 0.33, 0.05])
        col = (xx >= x) & (xx < x + bw)
        if kind == BUILDING:
            paint(col & (yy >= top), BUILDING)
        elif kind == VEGETATION:
            cy, r = top + H * 0.05, bw * 0.6
            paint(col & (((xx - x - bw / 2) ** 2 + (yy - cy) ** 2 < r * r) | (yy >= cy)), VEGETATION)
        x += bw
    side = below & (np.abs(xx - vx) >= half_walk)
    terrain_side = rng.random(2) < 0.35
    for s, sign in enumerate((-1, 1)):
        on_side = side & (np.sign(xx - vx) == sign)
        if terrain_side[s]:
            paint(on_side & (depth > 0.15), TERRAIN)
    paint(below & (np.abs(xx - vx) < half_walk), SIDEWALK)
    paint(below & (np.abs(xx - vx) < half_road), ROAD)

    def ground_x(d, sgn, frac):
        # x of a point at depth d on side sgn, frac of the way across the sidewalk
        hr = W * 0.45 * d
        return vx + sgn * (hr + frac * W * 0.2 * d)

    # Walls and fences along the outer sidewalk edge.
    for cls, prob in ((WALL, 0.3), (FENCE, 0.35)):
        if rng.random() < prob:
            sgn = rng.choice([-1, 1])
            d0, d1 = sorted(rng.uniform(0.2, 1.0, 2))
            height_px = H * rng.uniform(0.04, 0.1)
            outside = (np.sign(xx - vx) == sgn) & (np.abs(xx - vx) >= half_walk)
            ya, yb = h0 + (H - h0) * d0, h0 + (H - h0) * d1
            region = outside & (yy > ya - height_px * (0.5 + depth)) & (yy < yb)
            if cls == FENCE:  # posts and two rails: thin structure
                region &= ((xx.astype(int) % 4) == 0) | ((yy.astype(int) % 5) == 0)
            paint(region, cls)

    # Poles with lights and signs.
    for _ in range(rng.integers(1, 5)):
        d = rng.uniform(0.15, 0.9)
        sgn = rng.choice([-1, 1])
        px = ground_x(d, sgn, rng.uniform(0.1, 0.9))
        base = h0 + (H - h0) * d
        top = base - H * rng.uniform(0.3, 0.55) * (0.4 + d)
        wpx = max(1.0, W * 0.006 * (0.5 + d))
        paint((np.abs(xx - px) < wpx / 2 + 0.01) & (yy > top) & (yy < base), POLE)
        if rng.random() < 0.45:
            s = max(1.5, H * 0.03 * (0.4 + d))
            paint((np.abs(xx - px) < s / 2 + 0.5) & (yy > top) & (yy < top + 2 * s), LIGHT)
        if rng.random() < 0.5:
            s = max(1.5, H * 0.03 * (0.4 + d))
            cy = top + (base - top) * 0.3
            paint((np.abs(xx - px - sgn * s / 2) < s) & (np.abs(yy - cy) < s * 0.7), SIGN)

    # Vehicles, far to near so near ones occlude.
    vehicles = [(CAR, d) for d in rng.uniform(0.1, 1.0, rng.integers(2, 7))]
    for cls, prob in ((TRUCK, 0.15), (BUS, 0.12)):
        if rng.random() < prob:
            vehicles.append((cls, rng.uniform(0.1, 0.8)))
    if rng.random() < 0.05:  # rare: a train crossing at the horizon
        vehicles.append((TRAIN, 0.08))
    for cls, d in sorted(vehicles, key=lambda v: v[1]):
        base = h0 + (H - h0) * d
        scale = H * (0.3 + d)
        if cls == TRAIN:
            paint((yy > base - scale * 0.35) & (yy < base) & (xx > W * 0.05) & (xx < W * 0.95), TRAIN)
            continue
        w_, h_ = {CAR: (0.38, 0.14), TRUCK: (0.35, 0.25), BUS: (0.6, 0.27)}[cls]
        cx = vx + rng.uniform(-0.8, 0.8) * W * 0.45 * d
        box = (np.abs(xx - cx) < scale * w_ / 2) & (yy < base) & (yy > base - scale * h_)
        t = rng.uniform(-1, 1)
        paint(box, cls, t)
        window = box & (yy < base - scale * h_ * 0.55) & (np.abs(xx - cx) < scale * w_ * 0.35)
        tone[window] = t - 0.8  # darker glass, same class

    # People on sidewalks, riders on two-wheelers on the road, parked bicycles.
    for _ in range(rng.integers(0, 5)):
        d = rng.uniform(0.15, 1.0)
        px = ground_x(d, rng.choice([-1, 1]), rng.uniform(0.1, 0.9))
        base, s = h0 + (H - h0) * d, H * 0.22 * (0.3 + d)
        body = ((xx - px) / (s * 0.18)) ** 2 + ((yy - (base - s / 2)) / (s / 2)) ** 2 < 1
        paint(body, PERSON)
    for _ in range(int(rng.random() < 0.25) + int(rng.random() < 0.1)):
        d = rng.uniform(0.2, 1.0)
        px = vx + rng.uniform(-0.7, 0.7) * W * 0.45 * d
        base, s = h0 + (H - h0) * d, H * 0.22 * (0.3 + d)
        wheels = MOTORCYCLE if rng.random() < 0.4 else BICYCLE
        paint((np.abs(xx - px) < s * 0.3) & (yy < base) & (yy > base - s * 0.35), wheels)
        paint((((xx - px) / (s * 0.13)) ** 2 + ((yy - (base - s * 0.6)) / (s * 0.3)) ** 2) < 1, RIDER)
    if rng.random() < 0.2:
        d = rng.uniform(0.3, 1.0)
        px = ground_x(d, rng.choice([-1, 1]), rng.uniform(0.2, 0.8))
        base, s = h0 + (H - h0) * d, H * 0.22 * (0.3 + d)
        paint((np.abs(xx - px) < s * 0.3) & (yy < base) & (yy > base - s * 0.3), BICYCLE)
    return lab, tone, h0


def render(lab: np.ndarray, tone: np.ndarray, horizon: float, domain: str,
           rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 image of a scene in `domain` ("synthetic" or "real")."""
    H, W = lab.shape
    safe = np.where(lab == VOID, 0, lab)
    if domain == "synthetic":
        img = _SOURCE_PALETTE[safe] * (1 + 0.12 * tone[..., None])
        img += rng.normal(0, 2, img.shape)
    elif domain == "real":
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        img = _TARGET_PALETTE[safe] * (1 + 0.2 * tone[..., None])
        grain = rng.normal(0, 1, (H, W)).astype(np.float32)
        windows = ((yy.astype(int) // 3) % 2 == 0) & ((xx.astype(int) // 3) % 2 == 0)
        tex = np.zeros((H, W), np.float32)
        tex[lab == BUILDING] = np.where(windows, -35, 10)[lab == BUILDING]
        tex[lab == ROAD] = 12 * grain[lab == ROAD]
        tex[lab == VEGETATION] = 30 * grain[lab == VEGETATION]
        tex[lab == SKY] = -40 * (yy[lab == SKY] / max(horizon, 1))
        img += tex[..., None]
        ax, ay = rng.uniform(-0.4, 0.4, 2)
        light = rng.uniform(0.65, 1.15) * (1 + ax * (xx / W - 0.5) + ay * (yy / H - 0.5))
        img = img * light[..., None] + rng.normal(0, 10, img.shape)
        hood = yy > H * 0.93  # ego vehicle, void in the labels
        img[hood] = np.array([40, 40, 45], np.float32)
    else:
        raise ValueError(f"unknown domain {domain!r}")
    return np.clip(img, 0, 255).astype(np.uint8)


def sample(seed: int, split: str, index: int, size: tuple[int, int], domain: str):
    """(image (H, W, 3) uint8, labels (H, W) uint8 train ids with 255 void) of one image."""
    split_code = {"source": 0, "train": 1, "val": 2}[split]
    rng = np.random.default_rng([seed, split_code, index])
    lab, tone, horizon = make_scene(rng, *size)
    if domain == "real":
        lab = lab.copy()
        lab[np.arange(size[0]) > size[0] * 0.93] = VOID
    return render(lab, tone, horizon, domain, rng), lab


def _cityscapes_ids(lab: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, np.uint8)  # 0 = "unlabeled"
    lut[:19] = CITYSCAPES_LABEL_IDS
    lut[VOID] = 1                  # "ego vehicle"
    return lut[lab]


def _synthia_ids(lab: np.ndarray) -> np.ndarray:
    lut = np.zeros(256, np.uint16)  # 0 = void; terrain, truck, train have no SYNTHIA class
    for idx16, idx19 in enumerate(SYNTHIA16_FROM_19):
        lut[idx19] = SYNTHIA_LABEL_IDS[idx16]
    return lut[lab]


def source_names(layout: str, index: int) -> tuple[str, str]:
    """(image, label) paths, relative to the root, of source image `index` in `layout`."""
    if layout == "gtav":
        name = f"{index + 1:05d}.png"
        return f"images/{name}", f"labels/{name}"
    if layout == "synthia":
        name = f"{index:07d}.png"
        return f"RGB/{name}", f"GT/LABELS/{name}"
    raise ValueError(f"unknown source layout {layout!r} (gtav or synthia)")


def cityscapes_names(split: str, index: int) -> tuple[str, str]:
    """(image, label) paths, relative to the root, of target image `index` of `split`."""
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index // len(cities):06d}_000019"
    return (f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")


def _save(root: Path, rel: str, array: np.ndarray) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == np.uint16:
        write_png16(path, array)
    else:
        Image.fromarray(array).save(path)


def write_source(root: str | Path, layout: str, num_images: int, size: tuple[int, int],
                 seed: int = 0) -> None:
    """Write `num_images` synthetic-domain scenes in the GTAV or SYNTHIA layout under root."""
    root = Path(root)
    source_names(layout, 0)  # an unknown layout fails before anything is written
    for i in range(num_images):
        img, lab = sample(seed, "source", i, size, "synthetic")
        img_rel, lab_rel = source_names(layout, i)
        _save(root, img_rel, img)
        if layout == "gtav":
            _save(root, lab_rel, _cityscapes_ids(lab))
        else:
            ids = _synthia_ids(lab)
            inst = np.zeros_like(ids)  # channel 1 holds instance ids in SYNTHIA; unused here
            _save(root, lab_rel, np.stack([ids, inst, inst], -1))


def write_cityscapes(root: str | Path, split: str, num_images: int, size: tuple[int, int],
                     seed: int = 0) -> None:
    """Write `num_images` real-domain scenes of `split` in the Cityscapes layout under root."""
    root = Path(root)
    for i in range(num_images):
        img, lab = sample(seed, split, i, size, "real")
        img_rel, lab_rel = cityscapes_names(split, i)
        _save(root, img_rel, img)
        _save(root, lab_rel, _cityscapes_ids(lab))
