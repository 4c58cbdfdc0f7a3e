"""Checking users' images before anything is queued or stored (torch-free: the server uses it).

An upload is accepted only when it is a whole JPEG, PNG or WebP image within
the byte and pixel limits; anything else is a 4xx with one clear sentence.
The pixel limit is checked from the header, before any pixel is decoded, so a
small file that claims a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from app.core.errors import MicroscopeError
from app.core.settings import Settings

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class BadUpload(MicroscopeError):
    status_code = 400


class TooLarge(BadUpload):
    status_code = 413


class Unsupported(BadUpload):
    status_code = 415


@dataclass(frozen=True)
class UploadLimits:
    """The settings' ``probe_max_bytes`` (default 10 MB) and ``probe_max_pixels`` (default 40 MP)."""

    max_bytes: int = 10_000_000
    max_pixels: int = 40_000_000

    @classmethod
    def of(cls, settings: Settings) -> UploadLimits:
        return cls(max_bytes=settings.probe_max_bytes, max_pixels=settings.probe_max_pixels)


@dataclass(frozen=True)
class CheckedImage:
    sha256: str
    format: str
    width: int
    height: int


def check_image(data: bytes, limits: UploadLimits) -> CheckedImage:
    """The upload's digest and size, or the reason it is refused."""
    if not data:
        raise BadUpload("the upload is empty: send a JPEG, PNG or WebP image")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"the upload is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or "?"
                if kind not in FORMATS:
                    raise Unsupported(f"{kind} images are not supported: send a JPEG, PNG or WebP image")
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise TooLarge(f"the image is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels")
                image.load()
                if width < 1 or height < 1:
                    raise BadUpload("the image has no pixels")
    except UnidentifiedImageError:
        raise Unsupported("the upload is not an image: send a JPEG, PNG or WebP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"the image claims more than {limits.max_pixels:,} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadUpload(f"the image is truncated or corrupt ({error})") from None
    return CheckedImage(hashlib.sha256(data).hexdigest(), kind, width, height)
