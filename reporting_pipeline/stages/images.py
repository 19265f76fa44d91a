"""Image preparation: participant photos become small, metadata-free JPEG thumbnails."""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from reporting_pipeline.errors import CorruptImage, ImageTooLarge

# Refuse before decoding: 40 megapixels covers any phone camera, and a 20000x20000 image would
# need 1.2 GB of RGB memory to decode.
MAX_PIXELS = 40_000_000
THUMBNAIL_BOX = (480, 480)


def _too_large(ref: str, size: str) -> ImageTooLarge:
    return ImageTooLarge(f"image {ref}: {size} exceeds the {MAX_PIXELS:,}-pixel limit", ref)


def make_thumbnail(data: bytes, ref: str) -> tuple[bytes, int, int]:
    """JPEG thumbnail with EXIF orientation applied and all metadata dropped; returns (bytes, w, h)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # read from the header; nothing decoded yet
            if width * height > MAX_PIXELS:
                raise _too_large(ref, f"{width}x{height} = {width * height:,} pixels")
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
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow refuses the largest images while opening, before we see the header.
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(ref, f"{int(found.group(1)):,} pixels" if found else "too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise CorruptImage(f"image {ref}: cannot be decoded ({type(error).__name__})", ref) from None
    out = io.BytesIO()
    # A fresh save without exif=/icc_profile= writes no metadata at all (no GPS, no device).
    image.save(out, format="JPEG", quality=82, optimize=True)
    return out.getvalue(), image.width, image.height


LOGO_BOX = (600, 200)


def make_logo(data: bytes, ref: str) -> tuple[bytes, int, int]:
    """A trial's logo as a PNG at most 600x200 pixels, transparency flattened onto white; (bytes, w, h)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise _too_large(ref, f"{width}x{height} = {width * height:,} pixels")
            image.thumbnail(LOGO_BOX)
            image = image.convert("RGBA")
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, UnidentifiedImageError, OSError,
            SyntaxError, ValueError) as error:
        raise CorruptImage(f"image {ref}: cannot be decoded ({type(error).__name__})", ref) from None
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    out = io.BytesIO()
    flat.save(out, format="PNG", optimize=True)  # no metadata: a fresh save writes none
    return out.getvalue(), flat.width, flat.height
