"""What a decoder will produce, read from the compressed bytes before anything is decoded.

A file's header can say one thing and its compressed data another: a DICOM whose Rows/Columns say 64 × 64 can
carry a JPEG codestream that says 30000 × 30000, and the decoder allocates what the codestream says. A small
deflated DICOM can inflate to gigabytes before any header is read. A JPEG cut short after its header is
"decoded" by libjpeg as grey fill, at full size. These functions read what each decoder will act on — the
JPEG / JPEG-LS frame header, the JPEG 2000 SIZ segment, the deflate stream's inflated length — so that
`chexreason.images` refuses a lie or a bomb with a message, before the pixels exist.

>>> sof = b"\\xff\\xc0\\x00\\x0b\\x08\\x00\\x40\\x00\\x80\\x01\\x01\\x11\\x00"  # 64 rows, 128 columns
>>> sos = b"\\xff\\xda\\x00\\x08\\x01\\x01\\x00\\x00\\x3f\\x00"
>>> jpeg_frame(b"\\xff\\xd8" + sof + sos)
JpegFrame(width=128, height=64, huffman=True, components=((1, 1),), scan_bytes=0)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

# Start-of-frame markers: Huffman-coded (baseline, extended, progressive, lossless), arithmetic-coded, JPEG-LS.
_HUFFMAN_SOF = frozenset(b"\xc0\xc1\xc2\xc3\xc5\xc6\xc7")
_ARITHMETIC_SOF = frozenset(b"\xc9\xca\xcb\xcd\xce\xcf")
_JPEG_LS_SOF = 0xF7
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn carry no length
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
# DICOM transfer syntaxes whose frames carry their own image header: JPEG baseline, extended, lossless (two),
# JPEG-LS lossless and near-lossless; JPEG 2000 (lossless, lossy, the two multi-component ones) and HTJ2K.
_JPEG_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81))
_J2K_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203))
CODESTREAM_SYNTAXES = _JPEG_SYNTAXES | _J2K_SYNTAXES  # what `check_codestream` reads; others need no frame
_TRANSFER_SYNTAX_TAG = b"\x02\x00\x10\x00"


class DecodeLimitError(ValueError):
    """Compressed data that would decode to something else than its container says, or beyond a budget."""


@dataclass(frozen=True)
class JpegFrame:
    """A JPEG (or JPEG-LS) frame header, and how many bytes follow the first scan header.

    Attributes:
        width, height: what the decoder allocates (height 0: set later by a DNL marker).
        huffman: Huffman-coded (every 8 × 8 block costs at least one bit), not arithmetic-coded or JPEG-LS.
        components: each component's (horizontal, vertical) sampling factors.
        scan_bytes: bytes from the first scan's data to the end of the file.
    """

    width: int
    height: int
    huffman: bool
    components: tuple[tuple[int, int], ...]
    scan_bytes: int

    def fewest_scan_bytes(self) -> int:
        """The least compressed data a complete Huffman-coded image of this size can have: one bit per 8 × 8
        block of its largest component (a Huffman code is at least one bit, and every block codes its DC
        coefficient). Less means the data was cut short."""
        h_max = max(h for h, _ in self.components)
        v_max = max(v for _, v in self.components)
        blocks = max(
            math.ceil(math.ceil(self.width * h / h_max) / 8) * math.ceil(math.ceil(self.height * v / v_max) / 8)
            for h, v in self.components
        )
        return blocks // 8


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The frame header of a JPEG or JPEG-LS codestream, or None when the bytes hold none (not a JPEG, or cut
    short before it)."""
    if data[:2] != b"\xff\xd8":
        return None
    offset, frame = 2, None
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        if marker == _EOI:
            return None
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        segment = data[offset + 4 : offset + 2 + length]
        if marker in _HUFFMAN_SOF or marker in _ARITHMETIC_SOF or marker == _JPEG_LS_SOF:
            if len(segment) < 6:
                return None
            height, width, count = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
            factors = tuple((b >> 4, b & 0x0F) for b in segment[7 : 6 + 3 * count : 3])
            if len(factors) != count or not count or any(h == 0 or v == 0 for h, v in factors):
                return None
            frame = (width, height, marker in _HUFFMAN_SOF, factors)
        elif marker == _SOS:
            if frame is None:
                return None
            return JpegFrame(*frame, scan_bytes=max(0, len(data) - (offset + 2 + length)))
        offset += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (bare, or inside a JP2 file), or None."""
    start = data.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ: the codestream's first two markers
    siz = data[start + 2 : start + 24] if start >= 0 else b""
    if len(siz) < 22:
        return None
    xsiz, ysiz, x_offset, y_offset = (int.from_bytes(siz[i : i + 4], "big") for i in (6, 10, 14, 18))
    return xsiz - x_offset, ysiz - y_offset


def check_codestream(frame: bytes, syntax: str, width: int, height: int) -> None:
    """Refuse a DICOM frame whose JPEG / JPEG-LS / JPEG 2000 codestream declares other dimensions than the
    dataset's Columns × Rows (the decoder would allocate the codestream's), or which is cut short.

    Syntaxes without an embedded image header (RLE, uncompressed) are sized by Rows/Columns and pass.
    """
    if syntax in _J2K_SYNTAXES:
        size = j2k_size(frame)
        if size is None:
            raise DecodeLimitError("its JPEG 2000 codestream has no readable size (SIZ) header: it is damaged")
        _same_size(size, (width, height), "JPEG 2000 codestream")
    elif syntax in _JPEG_SYNTAXES:
        parsed = jpeg_frame(frame)
        if parsed is None:
            raise DecodeLimitError("its JPEG codestream has no readable frame header: it is damaged or cut short")
        _same_size((parsed.width, parsed.height), (width, height), "JPEG codestream")
        check_jpeg_complete(parsed)


def check_jpeg_complete(frame: JpegFrame) -> None:
    """Refuse a Huffman-coded JPEG with less compressed data than any complete image of its size has."""
    if frame.height == 0:
        raise DecodeLimitError("it sets its height only after the image data (a DNL marker), which is not accepted")
    if frame.huffman and frame.scan_bytes < frame.fewest_scan_bytes():
        raise DecodeLimitError(
            f"it declares {frame.width} × {frame.height} pixels but carries only {frame.scan_bytes:,} bytes of "
            f"image data, fewer than any complete image that size has ({frame.fewest_scan_bytes():,}): it is cut "
            f"short"
        )


def _same_size(found: tuple[int, int], declared: tuple[int, int], what: str) -> None:
    if found != declared:
        raise DecodeLimitError(
            f"its {what} says {found[0]} × {found[1]} pixels, but the file's header says {declared[0]} × "
            f"{declared[1]}: a file whose parts disagree is refused"
        )


def check_inflation(data: bytes, limit: int) -> None:
    """Refuse a Deflated Explicit VR DICOM whose dataset inflates to more than `limit` bytes, inflating it in
    pieces (nothing kept) so the check itself costs no memory. Other files pass unread."""
    start = _deflated_dataset_start(data)
    if start is None:
        return
    inflater, total, pending = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[start:]
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 2**20))
            pending = inflater.unconsumed_tail
            if total > limit:
                raise DecodeLimitError(
                    f"its deflated data inflates to more than {limit // 2**20} MiB, more than any chest X-ray needs"
                )
    except zlib.error as err:
        raise DecodeLimitError(f"its deflated data is damaged ({err})") from None


def _deflated_dataset_start(data: bytes) -> int | None:
    """Where the deflated dataset begins when the file meta (group 0002, always explicit little endian, led by
    its group length) names the deflated transfer syntax; None otherwise."""
    meta = 132 if data[128:132] == b"DICM" else 0
    if data[meta : meta + 6] != b"\x02\x00\x00\x00UL":
        return None
    end = meta + 12 + int.from_bytes(data[meta + 8 : meta + 12], "little")
    at = data.find(_TRANSFER_SYNTAX_TAG + b"UI", meta, end)
    if at < 0:
        return None
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    syntax = data[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")
    return end if syntax == DEFLATED else None
