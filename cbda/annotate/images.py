"""Which file each image id is, the name tools know it by, and how it is served.

An annotation tool must show an image at the label grid's pixel size, because its masks are
drawn in the pixels it shows. ``ImageCatalog`` holds, per image id, the file and its name
(the path relative to a root: the name CVAT's task lists and that Label Studio's local file
serving takes), and makes resized copies in a folder of the export when the files are not at
the label size.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import quote

from ..errors import InputError

__all__ = ["ImageCatalog"]


def _common_root(paths: list[Path]) -> Path:
    if not paths:
        return Path(".")
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


class ImageCatalog:
    """Image files by id.

    Args:
        paths: sequence of image file paths indexed by image id (e.g. a dataset's file list).
        root: the folder names are relative to; default the deepest folder holding them all.
    """

    def __init__(self, paths, root=None):
        try:
            self.paths = [Path(os.path.abspath(os.fspath(p))) for p in paths]
        except TypeError:
            raise InputError(f"images: expected a sequence of file paths, got {type(paths).__name__}") from None
        self.root = Path(os.path.abspath(os.fspath(root))) if root is not None else _common_root(self.paths)
        self._names = []
        for p in self.paths:
            try:
                self._names.append(p.relative_to(self.root).as_posix())
            except ValueError:
                raise InputError(f"image_root: image {p} is not inside {self.root}") from None
        self._by_name = {n: i for i, n in enumerate(self._names)}
        self._by_base: dict[str, int | None] = {}
        for i, n in enumerate(self._names):  # None marks a file name that occurs twice
            b = n.rsplit("/", 1)[-1]
            self._by_base[b] = None if b in self._by_base else i
        self._copied = None

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, image_id: int) -> Path:
        """The file of ``image_id``."""
        if not 0 <= int(image_id) < len(self.paths):
            raise InputError(f"image id {image_id}: not in the catalogue of {len(self.paths)} images")
        return self.paths[int(image_id)]

    def name(self, image_id: int) -> str:
        """Path of ``image_id`` relative to the root, with '/' separators."""
        self.path(image_id)
        return self._names[int(image_id)]

    def id_of(self, name: str) -> int | None:
        """Image id of a name as a tool reports it (a relative path; a bare file name works when
        unique); None when unknown."""
        n = posixpath.normpath(str(name).replace("\\", "/")).lstrip("/")
        if n in self._by_name:
            return self._by_name[n]
        return self._by_base.get(n) if "/" not in n else None

    def pixel_size(self, image_id: int) -> tuple[int, int]:
        """(H, W) of the file, read from its header."""
        from PIL import Image

        with Image.open(self.path(image_id)) as im:
            return im.size[1], im.size[0]

    def served(self, image_ids, size: tuple[int, int], copy_dir) -> "ImageCatalog":
        """A catalogue whose files of ``image_ids`` are at ``size`` (H, W): this one if they all
        are, else one over bicubic copies of every listed image written under ``copy_dir``
        (same relative names), so that a tool shows the label grid's pixels."""
        ids = [int(i) for i in image_ids]
        if all(self.pixel_size(i) == tuple(size) for i in ids):
            return self
        from PIL import Image

        copy_dir = Path(copy_dir)
        new_paths = list(self.paths)
        for i in ids:
            dst = copy_dir / self.name(i)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(self.path(i)) as im:
                im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC).save(dst)
            new_paths[i] = dst
        out = ImageCatalog.__new__(ImageCatalog)
        out.paths, out.root, out._names, out._by_name, out._by_base = (
            new_paths, self.root, self._names, self._by_name, self._by_base)
        out._copied = (copy_dir, set(ids))
        return out

    def file_for(self, image_id: int) -> tuple[Path, Path]:
        """(served file, its root): the copy folder for copied images, else the root."""
        copied = self._copied
        if copied is not None and int(image_id) in copied[1]:
            return self.paths[int(image_id)], copied[0]
        return self.paths[int(image_id)], self.root

    def local_files_root(self, image_id: int) -> tuple[Path, Path]:
        """(document root, storage path) for Label Studio's local file serving: the folder the
        names are relative to is the storage (Label Studio refuses a storage equal to its
        document root), its parent the document root."""
        _, root = self.file_for(image_id)
        return root.parent, root

    def reference(self, image_id: int, image_url: str | None = None, local_root=None) -> str:
        """How a Label Studio task points at the image.

        ``image_url`` given: ``image_url`` + the URL-quoted name (a web server over the root).
        Else Label Studio's local file serving: ``/data/local-files/?d=<path relative to
        local_root>`` (``local_root`` = LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; default the
        parent of the folder the names are relative to, see ``local_files_root``).
        """
        name = self.name(image_id)
        if image_url:
            return image_url.rstrip("/") + "/" + quote(name)
        path, _ = self.file_for(image_id)
        base = (Path(os.path.abspath(os.fspath(local_root))) if local_root is not None
                else self.local_files_root(image_id)[0])
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            raise InputError(f"local_root: image {path} is not inside {base}") from None
        return "/data/local-files/?d=" + quote(rel)
