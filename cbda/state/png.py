"""Minimal 8-bit grayscale PNG writer and reader (stdlib zlib + numpy, no Pillow).

The writer emits what RIPU's masks are: one IHDR (colour type 0, bit depth 8, no
interlace), one IDAT with filter type 0 on every row, IEND. The reader accepts that and any
other non-interlaced 8-bit grayscale PNG (all five row filters), which covers label maps
written by common tools.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..errors import InputError

__all__ = ["encode_png", "decode_png", "write_png", "read_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of ``image``: (H, W) uint8, H, W >= 1."""
    a = np.asarray(image)
    if a.ndim != 2 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"image: expected a non-empty (H, W) uint8 array, got shape {a.shape} dtype {a.dtype}")
    h, w = a.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    raw[:, 1:] = a
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        _SIGNATURE + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b"")
    )


def _paeth_row(cur: np.ndarray, prev: np.ndarray) -> None:
    # Sequential by definition (each byte predicts from the reconstructed left one).
    left = 0
    for i in range(cur.shape[0]):
        up = int(prev[i])
        ul = int(prev[i - 1]) if i else 0
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
        left = (int(cur[i]) + pred) & 0xFF
        cur[i] = left


def _avg_row(cur: np.ndarray, prev: np.ndarray) -> None:
    left = 0
    for i in range(cur.shape[0]):
        left = (int(cur[i]) + ((left + int(prev[i])) >> 1)) & 0xFF
        cur[i] = left


def decode_png(data: bytes) -> np.ndarray:
    """(H, W) uint8 array of an 8-bit grayscale, non-interlaced PNG."""
    if not data.startswith(_SIGNATURE):
        raise InputError("data: not a PNG file (bad signature)")
    pos, header, idat = len(_SIGNATURE), None, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if len(body) != length or zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise InputError(f"data: PNG chunk {kind!r} is truncated or fails its CRC")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise InputError("data: PNG has no IHDR or no IDAT chunk")
    w, h, depth, colour, _, _, interlace = header
    if depth != 8 or colour != 0 or interlace != 0:
        raise InputError(
            f"data: only 8-bit grayscale non-interlaced PNGs are supported, got bit depth {depth}, "
            f"colour type {colour}, interlace {interlace}"
        )
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    if raw.size != h * (w + 1):
        raise InputError(f"data: PNG image data has {raw.size} bytes, expected {h * (w + 1)}")
    raw = raw.reshape(h, w + 1)
    filters = raw[:, 0]
    out = raw[:, 1:].copy()
    if not filters.any():
        return out
    if filters.max() > 4:
        raise InputError(f"data: unknown PNG row filter {int(filters.max())}")
    prev = np.zeros(w, dtype=np.uint8)
    for y in range(h):
        f, cur = int(filters[y]), out[y]
        if f == 1:  # Sub: running sum along the row, mod 256
            cur[:] = np.cumsum(cur, dtype=np.uint8)
        elif f == 2:  # Up
            cur += prev
        elif f == 3:
            _avg_row(cur, prev)
        elif f == 4:
            _paeth_row(cur, prev)
        prev = cur
    return out


def write_png(path, image: np.ndarray) -> None:
    """Write ``image`` ((H, W) uint8) to ``path`` as a grayscale PNG."""
    with open(path, "wb") as f:
        f.write(encode_png(image))


def read_png(path) -> np.ndarray:
    """Read an 8-bit grayscale PNG into an (H, W) uint8 array."""
    with open(path, "rb") as f:
        return decode_png(f.read())
