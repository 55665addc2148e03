"""The labelling state of an active-learning run: picks per round, labels, exports.

``ActiveLabelState`` is the primary record (memory O(picks)); ``PriorPicks`` is the compact
per-batch view of earlier picks that the selection kernels take to block overlapping centres.
"""

from .png import decode_png, encode_png, read_png, write_png
from .prior import PriorPicks
from .state import FORMAT_VERSION, ActiveLabelState

__all__ = ["ActiveLabelState", "PriorPicks", "FORMAT_VERSION", "encode_png", "decode_png", "read_png", "write_png"]
