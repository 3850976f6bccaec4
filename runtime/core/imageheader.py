"""Image dimensions from the file header, before anything is decoded.

OpenCV has no "read the size only" call: ``cv2.imdecode`` allocates the whole bitmap, so a small
file whose header claims a huge image (a decompression bomb) costs gigabytes or raises. These
few lines read the width and height of the formats lgld lists as images (PNG, JPEG, BMP, TIFF,
WebP) from their headers, so a caller can refuse an image by its size first.
"""

from __future__ import annotations

import struct
from pathlib import Path

HEADER_BYTES = 1 << 20  # enough for any JPEG's metadata segments before its frame header

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header (see :func:`image_size`); a TIFF's
    directory may sit anywhere in the file, so it is read where its header points."""
    with Path(path).open("rb") as fh:
        data = fh.read(HEADER_BYTES)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            order = "<" if data[:2] == b"II" else ">"
            (offset,) = struct.unpack(order + "I", data[4:8])
            fh.seek(offset)
            directory = fh.read(2 + 12 * 4096)  # the entry count is 16-bit; width/height come early
            return _tiff_size(data[:4] + struct.pack(order + "I", 8) + directory)
    return image_size(data)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of an image file; None when the header is not one of
    PNG, JPEG, BMP, TIFF or WebP, or is cut short or damaged."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            if kind == 3:  # SHORT
                found[tag] = struct.unpack(order + "H", entry[8:10])[0]
            elif kind == 4:  # LONG
                found[tag] = struct.unpack(order + "I", entry[8:12])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None
