import io
import random
import struct
import zlib

import pytest
from PIL import Image

from reporting_pipeline.errors import CorruptImage, ImageTooLarge
from reporting_pipeline.local.seed import photo_bytes
from reporting_pipeline.stages.images import THUMBNAIL_BOX, make_thumbnail


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries a tiny compressed body (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_thumbnail_applies_exif_orientation_strips_metadata_and_downscales():
    source = photo_bytes(random.Random(1), 960, 720)
    assert Image.open(io.BytesIO(source)).getexif().get(0x0112) == 6
    jpeg, width, height = make_thumbnail(source, "p1")
    thumb = Image.open(io.BytesIO(jpeg))
    # 960x720 landscape stored with "rotate 90": displayed portrait, fitted into the box.
    assert (width, height) == thumb.size == (360, 480)
    assert max(thumb.size) <= max(THUMBNAIL_BOX)
    assert len(thumb.getexif()) == 0 and "exif" not in thumb.info and "icc_profile" not in thumb.info
    assert b"SynthPhone" not in jpeg and b"GPS" not in jpeg


def test_corrupt_image_is_refused():
    with pytest.raises(CorruptImage, match="image bad: cannot be decoded"):
        make_thumbnail(b"\xff\xd8\xff\xe0 not really a jpeg", "bad")
    truncated = photo_bytes(random.Random(2))[:400]
    with pytest.raises(CorruptImage):
        make_thumbnail(truncated, "cut")


def huge_png() -> bytes:
    """A real, valid 20000x20000 PNG: 48 KB on disk, 400 megapixels once decoded."""
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, format="PNG")
    return out.getvalue()


def test_20000_by_20000_image_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match=r"image huge: 400,000,000 pixels exceeds the 40,000,000-pixel limit"):
        make_thumbnail(huge_png(), "huge")


def test_image_over_our_limit_but_under_pillows_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match=r"9000x9000 = 81,000,000 pixels exceeds"):
        make_thumbnail(png_header_only(9000, 9000), "big")
