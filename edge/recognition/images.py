"""Image I/O at the edge of the package: decode files safely, check arrays strictly.

Inside the package a frame is a C-contiguous RGB ``uint8`` array of shape (H, W, 3).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError

MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MIN_SIDE = 16


def check_frame(frame: object, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Return ``frame`` as a contiguous (H, W, 3) uint8 RGB array or raise InputError saying why."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"expected an image as a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"expected dtype uint8 (0..255), got {frame.dtype}; "
                         "convert with np.clip(x, 0, 255).astype(np.uint8)")
    if frame.ndim == 2 or frame.ndim == 3 and frame.shape[2] == 1:
        raise InputError(f"expected an RGB image (H, W, 3), got grayscale {frame.shape}; "
                         "convert with edge.recognition.images.to_rgb")
    if frame.ndim == 3 and frame.shape[2] == 4:
        raise InputError(f"expected an RGB image (H, W, 3), got RGBA {frame.shape}; "
                         "convert with edge.recognition.images.to_rgb")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"expected an RGB image of shape (H, W, 3), got {frame.shape}")
    h, w = frame.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"image {w}x{h} is too small: each side must be at least {MIN_SIDE} px")
    if h * w > max_pixels:
        raise InputError(f"image {w}x{h} has {h * w:,} pixels, more than the limit of {max_pixels:,}")
    return np.ascontiguousarray(frame)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) / (H, W, 1) or RGBA (H, W, 4) uint8 -> RGB (H, W, 3)."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/BMP bytes to RGB uint8 (grayscale and RGBA are converted)."""
    if not data:
        raise InputError(f"{name}: empty file")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise InputError(f"{name}: image {size[0]}x{size[1]} has more than {max_pixels:,} pixels; refused before decoding")
    buf = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{name}: not a decodable image (corrupt, truncated or unsupported format)")
    if image.dtype != np.uint8:
        image = (image / 257).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = to_rgb(image)
    return check_frame(image, max_pixels)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS,
               max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), refusing huge, empty or corrupt files clearly."""
    p = Path(path)
    try:
        n = p.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{p}: no such image file") from None
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an image file")
    if n > max_bytes:
        raise InputError(f"{p}: file is {n:,} bytes, more than the limit of {max_bytes:,}")
    return decode_image(p.read_bytes(), str(p), max_pixels)


def save_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB uint8 image (JPEG or PNG by extension)."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InputError(f"{path}: could not write image")
