"""The photos a training learns from: a folder, a .zip, or uploaded (filename, bytes) pairs, checked one by one.

JPEG, PNG and WebP, recognised by their content (not their extension); EXIF orientation applied; a sidecar
`<stem>.txt` beside a photo is its caption (kohya's convention). Every problem is one PhotoError line naming the
photo by a short excerpt of its file name; a photo's bytes are never quoted.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from ..generation.request import excerpt
from .options import FEW_PHOTOS, MIN_PHOTOS

log = logging.getLogger(__name__)
FORMATS = {"JPEG", "PNG", "WEBP"}
MIN_SIDE = 256  # pixels, the shorter side
MAX_PHOTOS = 200
MAX_ZIP_BYTES = 256 * 2**20  # the .zip itself and what it unpacks to
MAX_CAPTION_CHARS = 1000
SKIPPED = ("__MACOSX", "Thumbs.db", "desktop.ini")  # what archivers and file browsers leave beside photos


class PhotoError(ValueError):
    """A photo, or the set of them, cannot be trained on: one line naming which and why."""


@dataclass
class Photo:
    name: str  # its file name, as given
    image: Image.Image  # RGB, upright
    caption: str | None  # from its sidecar .txt; None: the training's default caption


def read_photos(source: Path | list[tuple[str, bytes]], *, max_zip_bytes: int | None = None) -> list[Photo]:
    """The photos of a folder, a .zip file, or (filename, bytes) pairs (a .zip among them is unpacked), in file
    name order; raises PhotoError on the first problem. A zip may be `max_zip_bytes` long, packed and unpacked
    (default MAX_ZIP_BYTES). Fewer than 8 photos: a UserWarning (warnings.warn) says that more help."""
    max_zip_bytes = max_zip_bytes or MAX_ZIP_BYTES
    if isinstance(source, (str, Path)):
        files = _files_of(Path(source), max_zip_bytes)
    else:
        files = []
        for name, data in source:
            files += _unzip(name, data, max_zip_bytes) if name.lower().endswith(".zip") else [(name, data)]
    captions = {PurePosixPath(name).with_suffix("").as_posix(): data for name, data in files
                if name.lower().endswith(".txt")}
    photos = [_photo(name, data, captions) for name, data in sorted(files) if not name.lower().endswith(".txt")]
    if len(photos) < MIN_PHOTOS:
        raise PhotoError(f"{MIN_PHOTOS} photos at least are needed, got {len(photos)}")
    if len(photos) > MAX_PHOTOS:
        raise PhotoError(f"{MAX_PHOTOS} photos at most, got {len(photos)}")
    if len(photos) < FEW_PHOTOS:
        warnings.warn(f"only {len(photos)} photos: {FEW_PHOTOS} to 15 varied ones (angles, light, backgrounds) "
                      "give a better likeness", stacklevel=2)
    return photos


def _files_of(path: Path, max_zip_bytes: int) -> list[tuple[str, bytes]]:
    if path.is_dir():
        return [(child.name, child.read_bytes()) for child in sorted(path.iterdir())
                if child.is_file() and not _skipped(child.name)]
    if path.is_file() and path.suffix.lower() == ".zip":
        if path.stat().st_size > max_zip_bytes:
            raise PhotoError(f"{excerpt(path.name)}: the zip is over the limit of {_size(max_zip_bytes)}")
        return _unzip(path.name, path.read_bytes(), max_zip_bytes)
    if path.is_file():
        raise PhotoError(f"{excerpt(path.name)}: give a folder of photos or a .zip of them")
    raise PhotoError(f"{excerpt(str(path))}: no such folder or .zip")


def _unzip(name: str, data: bytes, max_zip_bytes: int) -> list[tuple[str, bytes]]:
    """A zip's files, refusing one over the limit (packed or unpacked) or with a path that leads out of it."""
    limit = f"the limit of {_size(max_zip_bytes)}"
    if len(data) > max_zip_bytes:
        raise PhotoError(f"{excerpt(name)}: the zip is over {limit}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
        for info in members:
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise PhotoError(f"{excerpt(name)}: holds a path outside the zip, {excerpt(info.filename)}")
        if sum(info.file_size for info in members) > max_zip_bytes:  # declared; the reads below are bounded too
            raise PhotoError(f"{excerpt(name)}: unpacks to more than {limit}")
        files = []
        for info in members:
            if not any(_skipped(part) for part in PurePosixPath(info.filename).parts):
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise PhotoError(f"{excerpt(name)}: {excerpt(info.filename)} is not the size the zip declares")
                files.append((info.filename, content))
        return files
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as error:
        raise PhotoError(f"{excerpt(name)}: not a readable zip ({type(error).__name__})") from None


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count:,} bytes"


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED


def _photo(name: str, data: bytes, captions: dict[str, bytes]) -> Photo:
    shown = excerpt(name)
    with warnings.catch_warnings():
        # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; a photo that large is refused all the same.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoError(f"{shown}: has too many pixels to be a photo (over {Image.MAX_IMAGE_PIXELS:,}); "
                             "a decompression bomb?") from None
        except Image.UnidentifiedImageError:
            raise PhotoError(f"{shown}: is not an image (JPEG, PNG or WebP)") from None
        except (OSError, SyntaxError, ValueError):  # "image file is truncated", broken chunks
            raise PhotoError(f"{shown}: is truncated or corrupt") from None
    if image.format not in FORMATS:
        raise PhotoError(f"{shown}: is {image.format}, not a JPEG, PNG or WebP photo")
    image = ImageOps.exif_transpose(image).convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise PhotoError(f"{shown}: is {image.width}x{image.height}; photos need {MIN_SIDE} pixels or more on "
                         "their shorter side")
    return Photo(name, image, _caption(name, captions))


def _caption(name: str, captions: dict[str, bytes]) -> str | None:
    data = captions.get(PurePosixPath(name).with_suffix("").as_posix())
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise PhotoError(f"{excerpt(name)}: its caption file is not UTF-8 text") from None
    if len(text) > MAX_CAPTION_CHARS:
        raise PhotoError(f"{excerpt(name)}: its caption is {len(text)} characters; {MAX_CAPTION_CHARS} at most")
    return text or None
