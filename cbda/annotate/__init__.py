"""The human in the loop: rounds exported to annotation tools, and their answers imported.

``export_round`` writes a round as Label Studio tasks with brush pre-annotations, CVAT for
images 1.1 XML with masks, previews, RIPU masks or a region list; ``import_answers`` turns a
Label Studio JSON or CVAT XML export back into the round's labels (``set_labels``), the whole
file or nothing. The RLE codecs of both tools are in ``brush_rle`` and ``mask_rle``.
"""
from .brush_rle import brush_rle_to_mask, decode_brush_rle, encode_brush_rle, mask_to_brush_rle
from .images import ImageCatalog
from .mask_rle import decode_cvat_rle, encode_cvat_rle
from .roundtrip import FORMATS, export_round, import_answers, read_answers
from .windows import ImportReport, RoundWindows

__all__ = [
    "FORMATS", "export_round", "import_answers", "read_answers", "ImportReport", "RoundWindows", "ImageCatalog",
    "encode_brush_rle", "decode_brush_rle", "mask_to_brush_rle", "brush_rle_to_mask",
    "encode_cvat_rle", "decode_cvat_rle",
]
