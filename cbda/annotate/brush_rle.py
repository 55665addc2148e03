"""Label Studio's brush RLE: the bit-packed run-length code of a brush mask.

Label Studio stores a brush region as the RGBA pixel buffer of the image (H·W·4 bytes, row
major, the mask in every channel: 255 painted, 0 not) compressed by the ``rle-pack`` scheme
its front end uses. The stream, most significant bit first:

    32 bits   number of values n
     5 bits   word size - 1 (8 for bytes)
    4×4 bits  the four run-length field widths - 1 (3, 4, 8, 16)
    then, until n values are produced, groups of
     1 bit    1 = a run of one repeated value, 0 = literal values
     2 bits   which of the four widths the length field has
     w bits   length - 1
              then one value (run) or ``length`` values (literals), word size bits each
    zero padding to a whole byte

The encoder writes runs only (one group per run of equal values, a run longer than 2^16
split); the decoder reads any stream of this form (Label Studio's own encoder emits literal
groups too). Both are vectorised over runs/fields with numpy.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["encode_brush_rle", "decode_brush_rle", "mask_to_brush_rle", "brush_rle_to_mask"]

_WIDTHS = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 4 * 4


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the maximal runs of equal values of a 1-D array."""
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, values.dtype)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    lengths = np.diff(np.append(starts, n))
    return lengths.astype(np.int64), values[starts]


def _pack_fields(vals: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Bits (uint8 0/1, MSB first) of the fields ``vals[i]`` written in ``widths[i]`` bits each."""
    total = int(widths.sum())
    owner = np.repeat(np.arange(widths.shape[0]), widths)
    # position of each bit inside its field, counted from the most significant one
    pos = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = np.repeat(widths, widths) - 1 - pos
    return ((vals[owner] >> shift) & 1).astype(np.uint8)


def encode_brush_rle(values) -> list[int]:
    """Brush RLE bytes of a flat value buffer.

    Args:
        values: 1-D array of uint8 (any integer dtype with values in [0, 255]); for a brush
            mask, the flattened (H, W, 4) RGBA buffer (``mask_to_brush_rle`` builds it).
    Returns:
        the stream as a list of ints in [0, 255] (the JSON form of ``value.rle``).
    """
    a = np.asarray(values)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"values: expected a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise InputError("values: brush RLE words are bytes, values must lie in [0, 255]")
    lengths, vals = _runs(a.astype(np.int64))
    return _encode_runs(lengths, vals, a.shape[0])


def _encode_runs(lengths: np.ndarray, vals: np.ndarray, total: int) -> list[int]:
    """The stream of ``total`` values given as runs (int64 lengths and values)."""
    if total >= 2**32:
        raise InputError(f"values: at most 2^32 - 1 values fit the 32-bit count, got {total}")
    # split runs longer than the widest length field (2^16) into full chunks plus a rest
    chunks = (lengths + 2**16 - 1) // 2**16
    run_vals = np.repeat(vals, chunks)
    run_lens = np.full(int(chunks.sum()), 2**16, dtype=np.int64)
    last = np.cumsum(chunks) - 1
    run_lens[last] = lengths - (chunks - 1) * 2**16
    size_idx = np.searchsorted(np.array([2**w for w in _WIDTHS]), run_lens)  # smallest width that fits
    k = run_lens.shape[0]
    # per run: flag (1 bit) = 1, size index (2 bits), length - 1, value (8 bits)
    fvals = np.stack([np.ones(k, np.int64), size_idx, run_lens - 1, run_vals], axis=1).ravel()
    fwidths = np.stack([np.ones(k, np.int64), np.full(k, 2), np.array(_WIDTHS)[size_idx],
                        np.full(k, 8)], axis=1).ravel()
    header_vals = np.array([total, 7] + [w - 1 for w in _WIDTHS], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    bits = _pack_fields(np.concatenate([header_vals, fvals]), np.concatenate([header_widths, fwidths]))
    return np.packbits(bits).tolist()


class _BitReader:
    """MSB-first fields of at most 25 bits, read from a big-endian 4-byte window (about a
    microsecond a field, where unpacking the whole stream to bits would cost 8 bytes a bit)."""

    def __init__(self, data: bytes):
        self.data = bytes(data) + b"\0\0\0\0"  # the 4-byte window may run past the end
        self.nbits = len(data) * 8
        self.pos = 0

    def _end(self, width: int) -> int:
        end = self.pos + width
        if end > self.nbits:
            raise InputError("rle: the brush RLE stream ends early (truncated or not brush RLE)")
        return end

    def read(self, width: int) -> int:
        end = self._end(width)
        b, off = self.pos >> 3, self.pos & 7
        v = (int.from_bytes(self.data[b:b + 4], "big") >> (32 - off - width)) & ((1 << width) - 1)
        self.pos = end
        return v

    def read_words(self, count: int, width: int) -> np.ndarray:
        end = self._end(count * width)
        b0, b1 = self.pos >> 3, (end + 7) >> 3
        bits = np.unpackbits(np.frombuffer(self.data[b0:b1], dtype=np.uint8))
        off = self.pos & 7
        chunk = bits[off:off + count * width].reshape(count, width).astype(np.int64)
        self.pos = end
        return chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def decode_brush_rle(rle, max_values: int | None = None) -> np.ndarray:
    """The flat uint8 value buffer of a brush RLE stream (inverse of ``encode_brush_rle``).

    Args:
        rle: list of ints in [0, 255] (or bytes), as in a Label Studio result's ``value.rle``.
        max_values: refuse streams declaring more values (guards against huge allocations).
    Returns:
        (n,) uint8 array.
    """
    try:
        data = np.asarray(bytearray(rle) if isinstance(rle, (bytes, bytearray)) else rle)
    except (TypeError, ValueError):
        raise InputError(f"rle: expected a list of byte values, got {type(rle).__name__}") from None
    if data.ndim != 1 or (data.size and (not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255)):
        raise InputError("rle: expected a flat list of ints in [0, 255]")
    r = _BitReader(data.astype(np.uint8).tobytes())
    n = (r.read(16) << 16) | r.read(16)
    word = r.read(5) + 1
    widths = [r.read(4) + 1 for _ in range(4)]
    if max_values is not None and n > max_values:
        raise InputError(f"rle: the stream declares {n} values, more than the {max_values} expected")
    if word > 8:
        raise InputError(f"rle: word size {word} bits does not fit the uint8 values of a brush mask")
    out = np.zeros(n, dtype=np.uint8)
    i = 0
    while i < n:
        is_run = r.read(1)
        length = r.read(widths[r.read(2)]) + 1
        j = min(i + length, n)
        if is_run:
            out[i:j] = r.read(word)
        else:
            out[i:j] = r.read_words(length, word)[: j - i]
        i = j
    return out


def mask_to_brush_rle(mask) -> list[int]:
    """Brush RLE of an (H, W) bool mask: the RGBA buffer with 255 in all channels where True."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask: expected an (H, W) array, got shape {m.shape}")
    # runs of the RGBA buffer are the mask's runs, four times as long: never build the buffer
    lengths, vals = _runs((m != 0).ravel())
    return _encode_runs(lengths * 4, vals.astype(np.int64) * 255, m.size * 4)


def brush_rle_to_mask(rle, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a brush RLE stream over an H×W RGBA buffer (alpha > 0 = painted).

    Raises InputError when the stream does not hold H·W·4 values (a mask of another size).
    """
    flat = decode_brush_rle(rle, max_values=height * width * 4)
    if flat.shape[0] != height * width * 4:
        raise InputError(
            f"rle: the mask holds {flat.shape[0]} values, expected {height}x{width}x4 = {height * width * 4} "
            "(a mask of another size)"
        )
    return flat.reshape(height, width, 4)[:, :, 3] > 0
