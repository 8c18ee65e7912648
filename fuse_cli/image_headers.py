"""What an image file declares it decodes to, read from its header, decoding nothing.

A PNG or WebP file of a few hundred bytes can declare tens of thousands of pixels a
side: decoded, and converted to float32 for resizing, that is gigabytes (a
decompression bomb). `tf.io.decode_image` decides the format by content, not by the
file's suffix, so this does too: PNG, GIF (every frame: TensorFlow decodes them all),
BMP, JPEG and WebP. Pure Python, no TensorFlow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

# What fuse decodes at most, frames included: 50 megapixels (8,660 x 5,773; larger than
# the largest common camera sensors). Decoding and resizing take ~15 bytes a pixel (RGB
# uint8, then float32), so one image stays under ~750 MB.
MAX_PIXELS = 50_000_000
_HEAD = 64
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                       0xCE, 0xCF})


@dataclass(frozen=True)
class Declared:
    """An image's format and the pixels it declares (`frames` full canvases for a GIF)."""

    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Every pixel the decoder produces."""
        return self.width * self.height * self.frames


def declared_size(f: BinaryIO) -> Declared | None:
    """The format and size an open image file declares, or None if it is none of the formats
    TensorFlow decodes (the decoder then refuses it) or its header is cut short."""
    head = f.read(_HEAD)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return Declared("png", width, height)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
            return Declared("gif", width, height, _gif_frames(f, head))
        if head.startswith(b"BM"):
            width, height = struct.unpack("<ii", head[18:26])
            return Declared("bmp", abs(width), abs(height))
        if head.startswith(b"\xff\xd8"):
            return _jpeg(f)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(head)
    except struct.error:
        return None
    return None


def _webp(head: bytes) -> Declared | None:
    kind = head[12:16]
    if kind == b"VP8 ":  # lossy: a 14-bit width and height after the frame tag
        width, height = struct.unpack("<HH", head[26:30])
        return Declared("webp", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the signature
        bits = struct.unpack("<I", head[21:25])[0]
        return Declared("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return Declared("webp", width, height)
    return None


def _jpeg(f: BinaryIO) -> Declared | None:
    """Walk the JPEG's segments (seeking over them) to its frame header."""
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            f.seek(-1, 1)
            continue
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # no length
            continue
        length = struct.unpack(">H", f.read(2))[0]
        if kind in _JPEG_SOF:
            frame = f.read(5)
            height, width = struct.unpack(">HH", frame[1:5])
            return Declared("jpeg", width, height)
        if kind in (0xD9, 0xDA) or length < 2:  # end, or scan data before any frame
            return None
        f.seek(length - 2, 1)


def _gif_frames(f: BinaryIO, head: bytes) -> int:
    """Count a GIF's image descriptors, skipping every data sub-block (reads the file)."""
    f.seek(13)
    flags = head[10]
    if flags & 0x80:
        f.seek(3 << ((flags & 0x07) + 1), 1)
    frames = 0
    while True:
        block = f.read(1)
        if not block or block == b"\x3b":
            return max(frames, 1)
        if block == b"\x21":  # extension: a label, then sub-blocks
            f.read(1)
        elif block == b"\x2c":  # an image: descriptor, local colour table, LZW size
            frames += 1
            descriptor = f.read(9)
            if len(descriptor) < 9:
                return max(frames, 1)
            if descriptor[8] & 0x80:
                f.seek(3 << ((descriptor[8] & 0x07) + 1), 1)
            f.read(1)
        else:
            return max(frames, 1)
        while (size := f.read(1)) and size != b"\0":
            f.seek(size[0], 1)
