"""Image file helpers: RGB/label PNG reading with resizing, and 16-bit RGB PNG read/write.

SYNTHIA stores its class id in channel 0 of a 16-bit RGB PNG. Pillow decodes 48-bit PNGs to
8-bit RGB by keeping the *high* byte of each sample, which is 0 for every class id; so we decode
those files ourselves (`read_png16`). The fast path lets Pillow's C decoder undo the PNG filters
twice with two unpackers (big- and little-endian high byte) and recombines the two bytes; a
pure-numpy decoder is the fallback if that Pillow detail ever changes.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_rgb(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB image, resized bicubically to size=(H, W) when given."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()


def read_label(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) integer label image (8-bit or 16-bit grey / palette), nearest-resized to (H, W)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B"):
            im = im.convert("L")
        arr = np.asarray(im)
    if size is not None:
        arr = resize_nearest(arr, size)
    return arr


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W[, ...]) array to (h, w), as torch's 'nearest' mode
    (source index floor(i * H / h)), so labels and active masks line up with the images."""
    h, w = size
    H, W = arr.shape[:2]
    if (H, W) == (h, w):
        return arr
    ys = np.minimum((np.arange(h) * H) // h, H - 1)
    xs = np.minimum((np.arange(w) * W) // w, W - 1)
    return arr[ys[:, None], xs[None, :]]


def write_png16(path: str | Path, arr: np.ndarray) -> None:
    """Write an (H, W, 3) uint16 array as a 16-bit RGB PNG (filter type 0)."""
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_png16 expects (H, W, 3), got {arr.shape}")
    h, w, _ = arr.shape
    rows = arr.astype(">u2").reshape(h, w * 6 // 2).view(np.uint8).reshape(h, w * 6)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    Path(path).write_bytes(_PNG_SIGNATURE + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def read_png16(path: str | Path) -> np.ndarray:
    """(H, W, C) uint16 samples of a 16-bit PNG (grey or RGB[A]); 8-bit files come back widened."""
    with Image.open(path) as im:
        tile = im.tile[0] if im.tile else None
        mode, args = im.mode, getattr(tile, "args", None)
    if mode == "RGB" and args == "RGB;16B":
        try:
            return _read_png16_pillow(path)
        except Exception:  # pragma: no cover - only if Pillow's internals change
            return _read_png16_numpy(Path(path).read_bytes())
    if mode == "RGB" and args is not None and args.startswith("RGB;16"):
        return _read_png16_numpy(Path(path).read_bytes())
    with Image.open(path) as im:
        arr = np.asarray(im).astype(np.uint16)
    return arr[..., None] if arr.ndim == 2 else arr


def _read_png16_pillow(path: str | Path) -> np.ndarray:
    planes = []
    for rawmode in ("RGB;16B", "RGB;16L"):  # high byte, then (reading BE data as LE) low byte
        with Image.open(path) as im:
            im.tile = [im.tile[0]._replace(args=rawmode)]
            planes.append(np.asarray(im).astype(np.uint16))
    return (planes[0] << 8) | planes[1]


def _read_png16_numpy(data: bytes) -> np.ndarray:
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos, idat = 8, []
    width = height = bit_depth = colour = 0
    while pos < len(data):
        (length,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, bit_depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if interlace:
                raise ValueError("interlaced 16-bit PNGs are not supported")
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    if bit_depth != 16:
        raise ValueError(f"expected a 16-bit PNG, got bit depth {bit_depth}")
    bpp = 2 * channels
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        ftype, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 1:  # Sub: a running sum per byte lane, mod 256
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 255
        elif ftype == 2:
            cur = (line + prev) & 255
        else:  # Average / Paeth depend on the reconstructed left byte: sequential
            cur = np.zeros(stride, np.int32)
            up = prev.astype(np.int32)
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    pred = (left + up[i]) >> 1
                else:
                    ul = up[i - bpp] if i >= bpp else 0
                    p = left + up[i] - ul
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else ul)
                cur[i] = (line[i] + pred) & 255
        out[y] = cur
        prev = out[y]
    return out.view(">u2").astype(np.uint16).reshape(height, width, channels)
