"""Image preparation: participant photos become small, metadata-free JPEG thumbnails."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

from reporting_pipeline.errors import CorruptImage, ImageTooLarge

# Refuse before decoding: 40 megapixels covers any phone camera, and a 20000x20000 image would
# need 1.2 GB of RGB memory to decode.
MAX_PIXELS = 40_000_000
THUMBNAIL_BOX = (480, 480)


def _too_large(ref: str, size: str) -> ImageTooLarge:
    return ImageTooLarge(f"image {ref}: {size} exceeds the {MAX_PIXELS:,}-pixel limit", ref)


@contextmanager
def _decoding(ref: str) -> Iterator[None]:
    """Pillow's refusals and decoding errors inside the block as ours: ImageTooLarge or CorruptImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses the largest images while opening, before we see the header.
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(ref, f"{int(found.group(1)):,} pixels" if found else "too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImage(f"image {ref}: cannot be decoded ({type(error).__name__})", ref) from None


def _open(data: bytes, ref: str) -> Image.Image:
    """The image, refused before decoding when its header gives more than MAX_PIXELS (inside `_decoding`)."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size  # read from the header; nothing decoded yet
    if width * height > MAX_PIXELS:
        raise _too_large(ref, f"{width}x{height} = {width * height:,} pixels")
    return image


def make_thumbnail(data: bytes, ref: str) -> tuple[bytes, int, int]:
    """JPEG thumbnail with EXIF orientation applied and all metadata dropped; returns (bytes, w, h)."""
    with _decoding(ref):
        image = _open(data, ref)
        width, height = image.size
        # JPEG can decode straight to a reduced size (no smaller than the thumbnail), which saves most
        # of the work; rotating by EXIF after shrinking moves a quarter of the pixels or fewer.
        scale = min(1.0, THUMBNAIL_BOX[0] / width, THUMBNAIL_BOX[1] / height)
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        orientation = image.getexif().get(0x0112, 1)
        image.thumbnail(THUMBNAIL_BOX)
        image = image.convert("RGB")
        if orientation != 1:
            image.getexif()[0x0112] = orientation
            image = ImageOps.exif_transpose(image)
    out = io.BytesIO()
    # A fresh save without exif=/icc_profile= writes no metadata at all (no GPS, no device).
    image.save(out, format="JPEG", quality=82, optimize=True)
    return out.getvalue(), image.width, image.height


LOGO_BOX = (600, 200)


def make_logo(data: bytes, ref: str) -> tuple[bytes, int, int]:
    """A trial's logo as a PNG at most 600x200 pixels, transparency flattened onto white; (bytes, w, h)."""
    with _decoding(ref):
        image = _open(data, ref)
        image.thumbnail(LOGO_BOX)
        image = image.convert("RGBA")
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, format="PNG", optimize=True)  # no metadata: a fresh save writes none
    return out.getvalue(), flat.width, flat.height
