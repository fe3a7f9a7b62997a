"""Reading training photos: a folder, a .zip, uploaded pairs; captions, orientation; and every photo problem as
one PhotoError line naming the photo (never its bytes)."""

import io
import re
import warnings
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import training_photo, unreadable_zips, write_photos, zipped
from stable_diffusion_xl.training import photos as photos_module
from stable_diffusion_xl.training.photos import PhotoError, read_photos


def jpeg(index: int = 0, size=(320, 300), **save) -> bytes:
    buffer = io.BytesIO()
    training_photo(index, size).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def pairs(count: int = 8) -> list[tuple[str, bytes]]:
    return [(f"photo-{index}.jpg", jpeg(index)) for index in range(count)]


def refused(source, **kwargs) -> str:
    with pytest.raises(PhotoError) as error:
        read_photos(source, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_folder_of_photos_is_read_in_name_order_as_rgb_with_sidecar_captions(tmp_path):
    write_photos(tmp_path, 8, kind="PNG")
    (tmp_path / "photo-3.txt").write_text("a photo of TOK person smiling\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0junk")  # hidden files are skipped
    photos = read_photos(tmp_path)
    assert [photo.name for photo in photos] == [f"photo-{index}.png" for index in range(8)]
    assert all(photo.decode().mode == "RGB" for photo in photos)
    assert [photo.caption for photo in photos] == [None] * 3 + ["a photo of TOK person smiling"] + [None] * 4


def test_jpeg_png_and_webp_are_read_by_content_and_fewer_than_8_warn(tmp_path):
    files = [("a.jpg", jpeg(0))]
    for kind, name in (("PNG", "b.png"), ("WEBP", "c.webp")):
        buffer = io.BytesIO()
        training_photo(1).save(buffer, kind)
        files.append((name, buffer.getvalue()))
    with pytest.warns(UserWarning, match="only 3 photos"):
        assert len(read_photos(files)) == 3


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the photo is shown portrait
    files = [("rotated.jpg", jpeg(0, size=(400, 300), exif=exif)), *pairs(7)]
    rotated = next(photo for photo in read_photos(files) if photo.name == "rotated.jpg")
    assert rotated.size == rotated.decode().size == (300, 400)


def test_a_zip_file_and_an_uploaded_zip_give_the_same_photos_and_captions(tmp_path):
    data = zipped([*[(f"set/{name}", content) for name, content in pairs(8)], ("set/photo-0.txt", b"TOK at sea"),
                   ("__MACOSX/set/._photo-0.jpg", b"resource fork")])
    (tmp_path / "photos.zip").write_bytes(data)
    from_file, uploaded = read_photos(tmp_path / "photos.zip"), read_photos([("photos.zip", data)])
    assert [(p.name, p.caption) for p in from_file] == [(p.name, p.caption) for p in uploaded]
    assert len(from_file) == 8 and from_file[0].caption == "TOK at sea"


def test_fewer_than_three_photos_are_refused():
    assert "3 photos at least" in refused(pairs(2))


def test_a_file_that_is_not_an_image_is_named_and_its_bytes_never_quoted():
    secret = b"this is no photo but a password: hunter2"
    message = refused([*pairs(), ("notes.jpg", secret)])
    assert message.startswith('"notes.jpg": is not an image') and "hunter2" not in message


def test_a_long_hostile_file_name_is_excerpted():
    message = refused([*pairs(), ("<script>" + "x" * 500 + ".jpg", b"nope")])
    assert len(message) < 160 and "x" * 100 not in message


def test_other_image_formats_are_refused():
    buffer = io.BytesIO()
    training_photo(0).save(buffer, "GIF")
    assert "is GIF, not a JPEG, PNG or WebP" in refused([*pairs(), ("anim.gif", buffer.getvalue())])


def test_a_truncated_photo_is_refused():
    data = jpeg(0)
    assert refused([*pairs(), ("cut.jpg", data[: len(data) // 2])]) == '"cut.jpg": is truncated or corrupt'


def test_a_decompression_bomb_is_refused_before_it_is_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # the 320x300 photos are 96,000: a "bomb" here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "decompression bomb" in refused(pairs())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 90_000)  # between the limit and twice it: Pillow only warns
    assert "decompression bomb" in refused(pairs())


def test_a_photo_under_256_pixels_is_refused():
    message = refused([*pairs(), ("small.jpg", jpeg(0, size=(400, 200)))])
    assert message == '"small.jpg": is 400x200; photos need 256 pixels or more on their shorter side'


def test_a_zip_over_the_limit_is_refused_packed_or_unpacked(tmp_path):
    data = zipped(pairs())
    (tmp_path / "big.zip").write_bytes(data)
    assert "over the limit" in refused(tmp_path / "big.zip", max_zip_bytes=len(data) - 1)
    assert "over the limit" in refused([("big.zip", data)], max_zip_bytes=len(data) - 1)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.jpg", bytes(2_000_000))
    assert "unpacks to more than" in refused([("bomb.zip", bomb.getvalue())], max_zip_bytes=1_000_000)


@pytest.mark.parametrize("path", ["../escape.jpg", "/etc/escape.jpg", "set/../../escape.jpg", "C:/escape.jpg",
                                  "..\\escape.jpg"])
def test_a_zip_with_a_path_outside_it_is_refused(path):
    message = refused([("photos.zip", zipped([*pairs(), (path, jpeg(0))]))])
    assert "holds a path outside the zip" in message


def test_a_file_that_is_not_a_zip_but_named_so_is_refused():
    assert refused([("photos.zip", b"PK\x03\x04 not really")]) == '"photos.zip": not a readable zip (BadZipFile)'


def test_a_missing_folder_and_a_single_photo_are_refused(tmp_path):
    assert "no such folder or .zip" in refused(tmp_path / "nowhere")
    write_photos(tmp_path, 1)
    assert "give a folder of photos or a .zip" in refused(tmp_path / "photo-0.jpg")


def test_a_caption_that_is_not_utf8_is_refused():
    assert "caption file is not UTF-8" in refused([*pairs(), ("photo-0.txt", b"\xff\xfe\xfa")])


def test_the_default_zip_limit_is_read_when_called(monkeypatch):
    data = zipped(pairs())
    monkeypatch.setattr(photos_module, "MAX_ZIP_BYTES", len(data) - 1)
    assert "over the limit" in refused([("photos.zip", data)])


def test_a_file_too_large_to_be_a_photo_and_too_many_files_are_refused_before_they_are_decoded(monkeypatch, tmp_path):
    monkeypatch.setattr(photos_module, "MAX_PHOTO_BYTES", 1000)
    assert re.fullmatch(r'"photo-0.jpg": is [\d,]+ bytes; a photo may be 1,000 bytes at most', refused(pairs()))
    monkeypatch.setattr(photos_module, "MAX_FILES", 5)
    assert "7 files; 200 photos at most" in refused(write_photos(tmp_path, 7))
    assert "8 files; 200 photos at most" in refused([("photos.zip", zipped(pairs()))])


def png(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def test_a_photo_over_the_megapixel_limit_is_refused_from_its_header_without_decoding_it():
    """Six of these 1-bit PNGs (10 KB each, 243 MB each as RGB) once cost a serving replica 2 GB."""
    huge = png(Image.new("1", (9000, 9000)))
    assert len(huge) < 20_000
    message = refused([*pairs(), ("huge.png", huge)], max_pixels=40_000_000)
    assert message == '"huge.png": is 9000x9000, 81 megapixels; a photo may have 40 at most'
    with pytest.warns(UserWarning):  # within Pillow's own limit: checked, still not decoded
        read = {photo.name: photo for photo in read_photos([*pairs(3), ("huge.png", huge)])}
    assert read["huge.png"].size == (9000, 9000) and read["huge.png"].data == huge


def test_the_photos_together_may_have_a_total_of_megapixels():
    assert refused(pairs(8), max_total_pixels=500_000) == ("the photos have 0.8 megapixels together; a training "
                                                           "takes at most 0.5: send fewer or smaller photos")
    assert len(read_photos(pairs(8), max_total_pixels=sum((320 + 8 * index) * 300 for index in range(8)))) == 8


def test_an_animated_photo_and_a_cut_png_are_refused_from_their_headers():
    frames = [training_photo(index) for index in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    assert refused([*pairs(), ("moving.png", buffer.getvalue())]) == ('"moving.png": is animated (3 frames); send '
                                                                       'still photos')
    whole = png(training_photo(0))
    assert refused([*pairs(), ("cut.png", whole[:-20])]) == '"cut.png": is truncated or corrupt'


def test_a_photo_damaged_inside_its_pixels_is_named_when_it_is_decoded():
    data = bytearray(jpeg(0))
    middle = (data.find(b"\xff\xda") + len(data)) // 2  # halfway through the scan: header and end marker intact
    data[middle: middle + 2] = b"\xff\xd8"  # a start-of-image marker amid the pixels
    photo = {p.name: p for p in read_photos([*pairs(3), ("damaged.jpg", bytes(data))])}["damaged.jpg"]
    with pytest.raises(PhotoError, match='^"damaged.jpg": is truncated or corrupt$'):
        photo.decode()


def test_a_large_jpeg_is_decoded_no_larger_than_the_training_needs():
    photo = {p.name: p for p in read_photos([*pairs(3), ("large.jpg", jpeg(0, size=(2400, 1800)))])}["large.jpg"]
    assert photo.size == (2400, 1800)
    assert photo.decode(shorter_side=400).size == (600, 450)  # a quarter and photo.decode().size == (2400, 1800)


@pytest.mark.parametrize("name", ["/", "", ".", "..", "a/", "\\", "x" * 300, "\0.jpg", "../../etc/passwd"])
def test_an_uploaded_file_name_is_text_never_a_path(name):
    photos = read_photos([(name, jpeg(9)), *pairs(7)])
    assert name in [photo.name for photo in photos] and len(photos) == 8


@pytest.mark.parametrize("error", ["RuntimeError", "error", "LZMAError"])  # encrypted; zlib.error; LZMA's
def test_an_encrypted_or_damaged_zip_is_refused_naming_it(error):
    archive = unreadable_zips(pairs(3))[error]
    assert refused([("photos.zip", archive)]) == f'"photos.zip": not a readable zip ({error})'


COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
SOUND_ZIPS = [zipped([*pairs(3), ("photo-0.txt", b"TOK at sea")], compression) for compression in COMPRESSIONS]


@settings(max_examples=300, deadline=None)
@given(sound=st.sampled_from(SOUND_ZIPS), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6),
       name=st.text(max_size=30))
def test_mutated_zips_and_hostile_file_names_give_photos_or_one_clean_line(sound, flips, name):
    """Whatever the bytes of the archive and the names of the files, reading them raises PhotoError or nothing."""
    data = bytearray(sound)
    for at, value in flips:
        data[int(at * (len(data) - 1))] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer than 8 photos
        for source in ([(f"{name}.zip", bytes(data))], [(name, jpeg(5)), (f"{name}.txt", name.encode()), *pairs(3)]):
            try:
                read_photos(source, max_zip_bytes=1 << 20)
            except PhotoError as error:
                assert "\n" not in str(error) and len(str(error)) < 300


def test_staged_photos_come_back_as_they_were_checked_captions_and_sizes_included(tmp_path):
    """A training over HTTP stages what the replica read; its task trains on that without reading it again."""
    from stable_diffusion_xl.training.output import stage_photos, staged_photos

    checked = read_photos([*pairs(3), ("photo-1.txt", b"a photo of TOK person")])
    folder = stage_photos(tmp_path, "f" * 32, checked)
    assert staged_photos(folder) == checked and checked[1].caption == "a photo of TOK person"
    assert sorted(path.name for path in folder.iterdir()) == ["0000", "0001", "0002", "photos.json"]
