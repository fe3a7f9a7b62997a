"""The photos a training learns from: a folder, a .zip, or uploaded (filename, bytes) pairs, checked one by one.

JPEG, PNG and WebP, recognised by their content (not their extension); EXIF orientation applied; a sidecar
`<stem>.txt` beside a photo is its caption (kohya's convention). Every problem is one PhotoError line naming the
photo by a short excerpt of its file name; a photo's bytes are never quoted, and a file name is text, never a path.

Reading checks each photo from its header alone (format, size, frames; a PNG's chunk checksums, a JPEG's end
marker): no pixel is decoded, so the memory a set of photos costs is the bytes sent, not what their headers
claim. A photo is decoded when it is trained on (Photo.decode), one at a time and no larger than the training
needs; damage inside a JPEG's pixels shows only then, and fails the training naming the photo.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from ..fields import UserError, excerpt
from .options import FEW_PHOTOS, MIN_PHOTOS

log = logging.getLogger(__name__)
FORMATS = {"JPEG", "PNG", "WEBP"}
MIN_SIDE = 256  # pixels, the shorter side
MAX_PHOTOS = 200
MAX_FILES = 2 * MAX_PHOTOS  # photos and their captions
MAX_PHOTO_BYTES = 64 * 2**20
MAX_ZIP_BYTES = 256 * 2**20  # the .zip itself and what it unpacks to
MAX_CAPTION_CHARS = 1000
SKIPPED = ("__MACOSX", "Thumbs.db", "desktop.ini")  # what archivers and file browsers leave beside photos
# EXIF orientations that turn a photo a quarter: its upright width is its stored height.
QUARTER_TURNS = (5, 6, 7, 8)


class PhotoError(UserError, ValueError):
    """A photo, or the set of them, cannot be trained on: one line naming which and why."""


@dataclass
class Photo:
    name: str  # its file name, as given
    data: bytes = field(repr=False)  # the file, checked but not decoded
    size: tuple[int, int]  # upright width and height, from its header
    caption: str | None  # from its sidecar .txt; None: the training's default caption

    @classmethod
    def of_image(cls, name: str, image: Image.Image, caption: str | None = None) -> Photo:
        """A photo made in memory (a program's own, the benchmark's), kept as a PNG file."""
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return cls(name, buffer.getvalue(), image.size, caption)

    def decode(self, shorter_side: int | None = None) -> Image.Image:
        """The photo as upright RGB; with `shorter_side`, a JPEG is decoded at the smallest of its 1/2, 1/4 and
        1/8 scales that keeps that many pixels on the shorter side. PhotoError when its pixels are corrupt."""
        try:
            image = Image.open(io.BytesIO(self.data))
            if shorter_side:
                image.draft("RGB", (shorter_side, shorter_side))
            return ImageOps.exif_transpose(image).convert("RGB")
        except Exception:  # see _header: any error reading a caller's bytes is their data's
            raise PhotoError(f"{excerpt(self.name)}: is truncated or corrupt") from None


def read_photos(source: Path | list[tuple[str, bytes]], *, max_zip_bytes: int | None = None,
                max_pixels: int | None = None, max_total_pixels: int | None = None) -> list[Photo]:
    """The photos of a folder, a .zip file, or (filename, bytes) pairs (a .zip among them is unpacked), in file
    name order, checked from their headers; raises PhotoError on the first problem. A zip may be `max_zip_bytes`
    long, packed and unpacked (default MAX_ZIP_BYTES); a photo may have `max_pixels`, and all together
    `max_total_pixels` (default: Pillow's bomb limit alone). Fewer than 8 photos: a UserWarning says more help."""
    max_zip_bytes = max_zip_bytes or MAX_ZIP_BYTES
    if isinstance(source, (str, Path)):
        files = _files_of(Path(source), max_zip_bytes)
    else:
        files = []
        for name, data in source:
            files += _unzip(name, data, max_zip_bytes) if name.lower().endswith(".zip") else [(name, data)]
    captions = {_stem(name): data for name, data in files if name.lower().endswith(".txt")}
    _check_count(len(files), "the photos")
    for name, data in files:
        _check_size(name, len(data))
    photos = [_photo(name, data, captions, max_pixels) for name, data in sorted(files)
              if not name.lower().endswith(".txt")]
    check_count(len(photos))
    total = sum(width * height for width, height in (photo.size for photo in photos))
    if max_total_pixels and total > max_total_pixels:
        raise PhotoError(f"the photos have {total / 1e6:.1f} megapixels together; a training takes at most "
                         f"{max_total_pixels / 1e6:.1f}: send fewer or smaller photos")
    if len(photos) < FEW_PHOTOS:
        warnings.warn(f"only {len(photos)} photos: {FEW_PHOTOS} to 15 varied ones (angles, light, backgrounds) "
                      "give a better likeness", stacklevel=2)
    return photos


def check_count(count: int) -> None:
    """A training learns from MIN_PHOTOS to MAX_PHOTOS photos."""
    if count < MIN_PHOTOS:
        raise PhotoError(f"{MIN_PHOTOS} photos at least are needed, got {count}")
    if count > MAX_PHOTOS:
        raise PhotoError(f"{MAX_PHOTOS} photos at most, got {count}")


def _files_of(path: Path, max_zip_bytes: int) -> list[tuple[str, bytes]]:
    if path.is_dir():
        children = [child for child in sorted(path.iterdir()) if child.is_file() and not _skipped(child.name)]
        _check_count(len(children), path.name)
        for child in children:
            _check_size(child.name, child.stat().st_size)
        return [(child.name, child.read_bytes()) for child in children]
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
        _check_count(len(members), name)
        for info in members:
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise PhotoError(f"{excerpt(name)}: holds a path outside the zip, {excerpt(info.filename)}")
        if sum(info.file_size for info in members) > max_zip_bytes:  # declared; the reads below are bounded too
            raise PhotoError(f"{excerpt(name)}: unpacks to more than {limit}")
        files = []
        for info in members:
            if not any(_skipped(part) for part in PurePosixPath(info.filename).parts):
                _check_size(info.filename, info.file_size)
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
                if len(content) != info.file_size:
                    raise PhotoError(f"{excerpt(name)}: {excerpt(info.filename)} is not the size the zip declares")
                files.append((info.filename, content))
        return files
    except PhotoError:
        raise
    except Exception as error:  # see _header: BadZipFile, RuntimeError (encrypted), zlib.error, LZMAError, ...
        raise PhotoError(f"{excerpt(name)}: not a readable zip ({type(error).__name__})") from None


def _check_count(count: int, where: str) -> None:
    if count > MAX_FILES:
        raise PhotoError(f"{excerpt(where)}: {count} files; {MAX_PHOTOS} photos at most (and their captions)")


def _check_size(name: str, size: int) -> None:
    if size > MAX_PHOTO_BYTES:
        raise PhotoError(f"{excerpt(name)}: is {_size(size)}; a photo may be {_size(MAX_PHOTO_BYTES)} at most")


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count:,} bytes"


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED


def _photo(name: str, data: bytes, captions: dict[str, bytes], max_pixels: int | None) -> Photo:
    shown = excerpt(name)
    width, height = _header(name, data)
    if max_pixels and width * height > max_pixels:
        raise PhotoError(f"{shown}: is {width}x{height}, {width * height / 1e6:.0f} megapixels; a photo may have "
                         f"{max_pixels / 1e6:.0f} at most")
    if min(width, height) < MIN_SIDE:
        raise PhotoError(f"{shown}: is {width}x{height}; photos need {MIN_SIDE} pixels or more on their shorter side")
    return Photo(name, data, (width, height), _caption(name, captions))


def _header(name: str, data: bytes) -> tuple[int, int]:
    """A photo's upright size, read from its header without decoding a pixel: one still JPEG, PNG or WebP, whose
    PNG chunks' checksums hold. The libraries raise many undocumented errors for bad data (struct.error, KeyError,
    IndexError from EXIF parsers, zlib.error, ...): any error while reading a caller's bytes is their data's."""
    shown = excerpt(name)
    with warnings.catch_warnings():
        # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; a photo that large is refused all the same.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise PhotoError(f"{shown}: is {image.format}, not a JPEG, PNG or WebP photo")
            if getattr(image, "n_frames", 1) > 1:
                raise PhotoError(f"{shown}: is animated ({image.n_frames} frames); send still photos")
            width, height = image.size
            turned = _orientation(image) in QUARTER_TURNS
            if image.format == "PNG":  # each chunk's CRC, IEND at the end: a cut or altered PNG, without inflating it
                Image.open(io.BytesIO(data)).verify()  # verify needs a file just opened
            if image.format == "JPEG" and data.rfind(b"\xff\xd9") < 0:  # no end-of-image marker: cut short
                raise PhotoError(f"{shown}: is truncated or corrupt")
        except PhotoError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoError(f"{shown}: has too many pixels to be a photo (over {Image.MAX_IMAGE_PIXELS:,}); "
                             "a decompression bomb?") from None
        except Image.UnidentifiedImageError:
            raise PhotoError(f"{shown}: is not an image (JPEG, PNG or WebP)") from None
        except Exception:  # "image file is truncated", broken chunks, corrupt EXIF
            raise PhotoError(f"{shown}: is truncated or corrupt") from None
    return (height, width) if turned else (width, height)


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation a header gives. A PNG's is read from the chunks before its pixels: Pillow's getexif()
    would decode the whole PNG to look for one after them."""
    if image.format != "PNG":
        return image.getexif().get(0x0112)
    exif = Image.Exif()
    if "exif" in image.info:
        exif.load(image.info["exif"])
    return exif.get(0x0112)


def _stem(name: str) -> str:
    """A file name without its last suffix, as plain text (a caller's name may be "/", "." or empty)."""
    base = name.rpartition("/")[2]
    return name[: len(name) - len(base) + base.rfind(".")] if base.rfind(".") > 0 else name


def _caption(name: str, captions: dict[str, bytes]) -> str | None:
    data = captions.get(_stem(name))
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise PhotoError(f"{excerpt(name)}: its caption file is not UTF-8 text") from None
    if len(text) > MAX_CAPTION_CHARS:
        raise PhotoError(f"{excerpt(name)}: its caption is {len(text)} characters; {MAX_CAPTION_CHARS} at most")
    return text or None
