"""Load a chest X-ray from PNG, JPEG or DICOM as an 8-bit greyscale PIL image, refusing bad input cleanly.

Everything that turns a user's file into model input goes through `load_image_with_info` (or its thin
wrappers `load_image` and `inspect_image`), so the app, the dataset readers and the benchmarks see the
same pixels. The image keeps its own size: resizing is the model processor's job.

The format is detected from the content, not the name (a PNG named ``.jpg`` still loads); a DICOM file
without its 128-byte preamble and ``DICM`` magic is recognised by its first element's tag (or its ``.dcm``
name). Whatever goes wrong — empty, truncated or damaged files, text, other formats, decompression bombs,
DICOM objects that are not a single greyscale image, a compression whose decoder is not installed — raises
`ImageError` with a message a person can act on, never a raw traceback from a decoder.

Decoding stays within a budget for every format: the size any decoder will allocate is read from what that
decoder acts on — the PNG/JPEG header, a DICOM frame's own JPEG / JPEG-LS / JPEG 2000 codestream header (which
must agree with Rows/Columns), the inflated length of a deflated DICOM — and checked before decoding
(`chexreason.decode_limits`); a Huffman-coded JPEG with less data than any complete image of its size is
refused as cut short. The app also decodes in a separate, memory-limited process (`chexreason.app.decoding`).

Patient-identifying DICOM metadata (names, IDs, dates, …) is never logged, put in an error message or
returned: `ImageInfo` carries only the format, size, bit depth and view position.

>>> import io
>>> from PIL import Image
>>> buffer = io.BytesIO()
>>> Image.new("RGB", (64, 48), (200, 100, 0)).save(buffer, format="PNG")
>>> image, info = load_image_with_info(buffer.getvalue())
>>> image.mode, image.size
('L', (64, 48))
>>> info
ImageInfo(format='PNG', width=64, height=48, bits=8, view=None)
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
import pydicom.uid
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from chexreason.decode_limits import (
    CODESTREAM_SYNTAXES,
    DecodeLimitError,
    check_codestream,
    check_inflation,
    check_jpeg_complete,
    jpeg_frame,
)

logger = logging.getLogger(__name__)

# The largest image accepted, in pixels, checked from the header before any pixel is decoded so that a
# decompression bomb (a tiny file declaring a huge image) is refused cheaply. The largest chest X-ray
# detectors are about 4300 × 4300 ≈ 18.5 megapixels; 50 megapixels leaves room for scanned films.
MAX_PIXELS = 50_000_000
# Smaller than this on either side cannot be a chest X-ray (and would be upscaled into mush).
MIN_SIDE = 32
# The largest file read: an uncompressed 16-bit DICOM at MAX_PIXELS is 100 MB.
MAX_FILE_BYTES = 256 * 2**20

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Formats people may upload by mistake, named so the message can say what the file actually is.
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"GIF8", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# A DICOM stream without its 128-byte preamble starts with its first element's tag, little endian: the file meta
# group (0002) or, without meta, the first group it holds — identification (0008), patient (0010), acquisition
# (0018), relationship (0020) or image (0028). Read with pydicom's force; refused if it turns out not to be one.
_DATASET_STARTS = tuple(group.to_bytes(2, "little") for group in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028))
# DICOM code strings (CS): the only text from a DICOM file we ever repeat, and only if it has this shape.
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


class ImageError(ValueError):
    """An input that is not a loadable chest X-ray; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class ImageInfo:
    """Non-identifying facts about a loaded image.

    Attributes:
        format: "PNG", "JPEG" or "DICOM" — what the content is, whatever the file name says.
        width, height: the size of the image `load_image` returns (after EXIF orientation).
        bits: the source's bit depth per sample: the PNG header's (for palette images, of the indices), the
            JPEG sample precision, or DICOM Bits Stored.
        view: the DICOM View Position ("PA", "AP", "LL", "LATERAL", …), so the app can warn on lateral
            views; None for PNG/JPEG and for DICOM files that do not record it.
    """

    format: str
    width: int
    height: int
    bits: int
    view: str | None = None


def load_image(source: ImageSource) -> Image.Image:
    """Load a chest X-ray as an 8-bit greyscale ("L") image at its own size; see `load_image_with_info`."""
    return load_image_with_info(source)[0]


def inspect_image(source: ImageSource) -> ImageInfo:
    """Return the `ImageInfo` of a chest X-ray.

    This decodes the whole image, so an `ImageInfo` is only ever returned for an image `load_image`
    accepts; when the pixels are needed too, call `load_image_with_info` once instead.
    """
    return load_image_with_info(source)[1]


def load_image_with_info(source: ImageSource) -> tuple[Image.Image, ImageInfo]:
    """Load a chest X-ray as an 8-bit greyscale ("L") image at its own size, with facts about the source.

    Args:
        source: a path, the file's bytes, or a binary file object (read from its current position).

    Conversions, chosen so every source looks like a conventional radiograph (bone bright, air dark):

    - 16-bit PNG: scaled from the image's own min..max, since 10-, 12- and 14-bit data stored in 16 bits
      would look black under a fixed shift; a constant image becomes all 0.
    - Transparency (RGBA, LA, palette with transparency): composited on black, because an X-ray's
      background is dark — on white, transparent borders would glow like bone.
    - Colour (RGB, palette, CMYK): PIL's standard luma.
    - JPEG/PNG EXIF orientation is applied, as every viewer does (phone photos of films carry it).
    - DICOM: the modality LUT (Rescale Slope/Intercept), then the VOI LUT or window centre/width when
      present, scaled so the window's ends map to 0 and 255 (without one: the image's own min..max);
      MONOCHROME1 is inverted. Multi-frame, colour and image-less objects are refused.

    Raises:
        ImageError: the input is not a PNG, JPEG or DICOM chest X-ray that can be decoded here.
    """
    data, name = _read_source(source)
    kind = _sniff(data, name)
    try:
        if kind == "DICOM":
            image, info = _load_dicom(data, name)
        else:
            image, info = _load_pil(data, kind)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(
            f"The {kind} image needs more memory to decode than one image may use; it is refused. Downscale it."
        ) from None
    except Exception as err:  # the boundary: no decoder's exception escapes as anything but ImageError
        # DICOM errors are reported by type only: pydicom's messages may quote element values.
        detail = type(err).__name__ if kind == "DICOM" else f"{type(err).__name__}: {err}"
        raise ImageError(
            f"The {kind} file could not be decoded ({detail}); it may be truncated or damaged. "
            f"Export or download the image again."
        ) from err
    logger.debug("loaded %s image %dx%d, %d-bit, view %s", info.format, info.width, info.height, info.bits, info.view)
    return image, info


def _read_source(source: ImageSource) -> tuple[bytes, str | None]:
    """Return the input's bytes and its file name (None for bytes), refusing empty and oversized input."""
    name: str | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise ImageError(f"No image file at {str(path)!r}: check the path.")
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ImageError(f"The file is larger than {MAX_FILE_BYTES // 2**20} MiB; no chest X-ray is that big.")
            data = path.read_bytes()
        except OSError as err:
            raise ImageError(f"The file {str(path)!r} could not be read ({err.strerror or err}).") from err
    elif hasattr(source, "read"):
        file_name = getattr(source, "name", None)
        name = Path(file_name).name if isinstance(file_name, str) else None
        data = source.read(MAX_FILE_BYTES + 1)
        if not isinstance(data, bytes | bytearray):
            raise ImageError("The file was opened in text mode; open it in binary mode ('rb').")
        data = bytes(data)
    else:
        raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
    if not data:
        raise ImageError("The file is empty (0 bytes); upload the image again.")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"The file is larger than {MAX_FILE_BYTES // 2**20} MiB; no chest X-ray is that big.")
    return data, name


def _sniff(data: bytes, name: str | None) -> str:
    """Name the format from the content ("PNG", "JPEG", "DICOM"), or refuse saying what the file seems to be."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[128:132] == b"DICM" or data[:2] in _DATASET_STARTS:
        return "DICOM"
    if name is not None and name.lower().endswith(".dcm"):
        return "DICOM"  # possibly a DICOM file without preamble: read with pydicom's force
    raise ImageError(_not_an_image(data, name))


def _not_an_image(data: bytes, name: str | None) -> str:
    """The message for content that is none of the supported formats, naming what it looks like."""
    seems = next((what for magic, what in _OTHER_MAGICS if data.startswith(magic)), None)
    head = data[:1024]
    if seems is None and b"\x00" not in head:
        try:
            head.decode("utf-8")
            seems = "text"
        except UnicodeDecodeError as err:  # a multi-byte character cut at the end is still text
            seems = "text" if err.start >= len(head) - 3 else None
    suffix = Path(name).suffix if name else ""
    named = f" despite its {suffix!r} name" if suffix else ""
    found = f" It holds {seems}{named}." if seems else f" Its content matches none of them{named}."
    return f"The file is not a PNG, JPEG or DICOM image.{found} Export the X-ray as PNG, JPEG or DICOM."


def _check_size(kind: str, width: int, height: int) -> None:
    """Refuse images too large to be safe to decode or too small to be an X-ray, from header sizes."""
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The {kind} image declares {width} × {height} pixels, more than the {MAX_PIXELS:,} accepted "
            f"(chest X-rays are at most about 4300 × 4300); it is refused before decoding. Downscale it."
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(
            f"The {kind} image is only {width} × {height} pixels; a chest X-ray needs at least "
            f"{MIN_SIDE} × {MIN_SIDE}. Upload the full-resolution image, not a thumbnail."
        )


def _load_pil(data: bytes, kind: str) -> tuple[Image.Image, ImageInfo]:
    """Decode a PNG or JPEG with PIL, refusing oversized headers before the pixels are decoded."""
    with warnings.catch_warnings():
        # PIL only warns between its two bomb limits; make that a refusal like the error above them. (Before
        # Python 3.14 this filter is process-wide: at worst another thread sees PIL's warning as an error too.)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
        except UnidentifiedImageError as err:
            raise ImageError(
                f"The file starts like a {kind} image but its header is damaged or cut short. "
                f"Export or download the image again."
            ) from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(
                f"The {kind} image is refused as a possible decompression bomb ({err}); "
                f"images above {MAX_PIXELS:,} pixels are not accepted. Downscale it."
            ) from err
    _check_size(kind, *image.size)
    frame = jpeg_frame(data) if kind == "JPEG" else None
    if frame is not None:
        _within_limits(check_jpeg_complete, frame, kind="JPEG")
    image.load()  # decodes now, so truncation raises here, inside the caller's boundary
    # PNG: the IHDR bit depth (always the first chunk); JPEG: the frame's sample precision.
    bits = (data[24] if data[12:16] == b"IHDR" else 8) if kind == "PNG" else int(getattr(image, "bits", 8))
    ImageOps.exif_transpose(image, in_place=True)
    gray = to_grayscale(image)
    if bits > 8:
        # PIL keeps 16-bit greyscale as 16 bits (already stretched), but reduces 16-bit colour and
        # grey+alpha to their high bytes, which leaves 12-bit data nearly black: stretch those too.
        gray = Image.fromarray(_to_uint8(np.asarray(gray)))
    return gray, ImageInfo(kind, gray.width, gray.height, bits)


def to_grayscale(image: Image.Image) -> Image.Image:
    """Convert any PIL mode a PNG or JPEG decodes to to "L" (see `load_image_with_info` for the rules)."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(_to_uint8(np.asarray(image)))
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if "A" in image.getbands():
        if image.mode not in ("LA", "RGBA"):
            image = image.convert("RGBA")
        black = Image.new("L", image.size, 0)
        return Image.composite(image.convert("L"), black, image.getchannel("A"))
    if image.mode == "L":
        return image
    if image.mode in ("1", "RGB"):
        return image.convert("L")
    return image.convert("RGB").convert("L")  # CMYK, YCbCr, LAB: through RGB, the conversion PIL always has


def _to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map `low`..`high` (default: the array's own min..max) linearly onto 0..255; a constant array maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _load_dicom(data: bytes, name: str | None) -> tuple[Image.Image, ImageInfo]:
    """Decode a single-frame greyscale DICOM image, with its modality and VOI transforms applied."""
    forced = data[128:132] != b"DICM"  # no preamble: tried because it starts like a dataset, or is named .dcm
    _within_limits(check_inflation, data, MAX_FILE_BYTES, kind="DICOM")  # pydicom would inflate without a bound
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=forced)
    except Exception as err:
        if forced:  # a .dcm name on something pydicom cannot parse either: say what it is not
            raise ImageError(_not_an_image(data, name)) from err
        raise
    if forced and not any(keyword in ds for keyword in ("PixelData", "Rows", "SOPClassUID")):
        raise ImageError(_not_an_image(data, name))
    if "PixelData" not in ds:
        sop_class = pydicom.uid.UID(str(ds.get("SOPClassUID", "")))
        what = f" (a {sop_class.name} object)" if sop_class.is_valid and sop_class.name != sop_class else ""
        raise ImageError(
            f"This DICOM file holds no image{what}: it has no Pixel Data. Reports and other non-image objects "
            f"cannot be read; choose the X-ray image itself."
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageError(
            f"This DICOM file holds {frames} frames; only single-frame images are accepted. "
            f"Export the one frame you want."
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1 or photometric not in _MONOCHROME:
        shown = photometric if _CODE_STRING.fullmatch(photometric) else "not recorded"
        raise ImageError(
            f"This DICOM image is not greyscale (Photometric Interpretation: {shown}, {samples} samples per "
            f"pixel); chest X-rays are MONOCHROME1 or MONOCHROME2. Export the greyscale original."
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageError("This DICOM file does not record its image size (Rows, Columns); it is damaged.")
    _check_size("DICOM", int(ds.Columns), int(ds.Rows))

    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ImageError(
            f"This DICOM's pixel data uses the transfer syntax {_syntax_name(syntax)}, which cannot be decoded "
            f"here. Export it uncompressed (Explicit VR Little Endian) or as PNG."
        ) from err
    if not decoder.is_available:
        raise ImageError(
            f"This DICOM's pixel data is compressed with {_syntax_name(syntax)}, and no decoder for it is "
            f"installed. {_decoder_report(decoder, 'Install one: pydicom decodes it with')} Or export the image "
            f"uncompressed or as PNG."
        )
    if syntax in CODESTREAM_SYNTAXES:  # the codestream, not Rows/Columns, sizes what its decoder allocates
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        _within_limits(check_codestream, frame, str(syntax), int(ds.Columns), int(ds.Rows), kind="DICOM")
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as err:
        raise ImageError(
            f"The DICOM pixel data ({_syntax_name(syntax)}) could not be decoded ({type(err).__name__}); "
            f"it may be damaged or cut short. Export or download the image again. "
            f"{_decoder_report(decoder, 'Other decoders pydicom knows for it:')}"
        ) from err
    if stored.ndim != 2:
        raise ImageError(f"This DICOM pixel data has shape {stored.shape}; a single greyscale frame is needed.")

    gray = _dicom_to_uint8(stored, ds)
    if photometric == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 shows its lowest values white: invert so bone is bright, as in MONOCHROME2
    view = str(ds.get("ViewPosition") or "").strip().upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    image = Image.fromarray(gray)
    return image, ImageInfo("DICOM", image.width, image.height, bits, view if _CODE_STRING.fullmatch(view) else None)


def _within_limits(check: Any, *args: Any, kind: str) -> None:
    """Run a `chexreason.decode_limits` check, its refusal as an `ImageError`."""
    try:
        check(*args)
    except DecodeLimitError as err:
        raise ImageError(f"The {kind} file is refused before decoding: {err}. Export the image again.") from None


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    """The dataset's transfer syntax; for a file without meta header, the encoding pydicom read it with."""
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return pydicom.uid.UID(str(syntax))
    implicit, little = ds.original_encoding
    if implicit:
        syntax = pydicom.uid.ImplicitVRLittleEndian
    else:
        syntax = pydicom.uid.ExplicitVRLittleEndian if little is not False else pydicom.uid.ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = syntax  # pydicom needs it to decode the pixels
    return syntax


def _syntax_name(syntax: pydicom.uid.UID) -> str:
    """A transfer syntax's standard name, or its UID if pydicom does not know it (never other text)."""
    return syntax.name if syntax.is_valid else "an invalid transfer syntax"


def _decoder_report(decoder: Any, lead: str) -> str:
    """pydicom's own report of the decoding plugins it lacks for a syntax and what each needs, after `lead`."""
    missing = decoder.missing_dependencies  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
    return f"{lead} {'; '.join(missing)}." if missing else ""


def _dicom_to_uint8(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the modality LUT, then the VOI LUT or window, and scale the result to 0..255.

    With a VOI transform, its own output range is scaled to 0..255 — found by sending the extreme stored
    values through the same pydicom functions — so values below the window become 0 and above it 255
    even if the image holds none of them. Without one, the image's own min..max is used: raw detector
    data rarely fills its Bits Stored range.
    """
    modality = _as_integers_if_whole(apply_modality_lut(stored, ds))
    try:
        voi = apply_voi_lut(modality, ds)
    except (ValueError, NotImplementedError, IndexError, TypeError) as err:
        # A broken window (e.g. width 0) is a metadata error, not a reason to refuse the image.
        logger.warning("ignoring the DICOM's unusable VOI LUT/window (%s); using min..max", type(err).__name__)
        return _to_uint8(modality)
    if voi is modality:  # no VOI LUT and no window in the dataset
        return _to_uint8(modality)
    bits = int(ds.get("BitsStored") or stored.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation") or 0):
        extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        extremes = np.array([0, 2**bits - 1], dtype=np.int64)
    ends = apply_voi_lut(_as_integers_if_whole(apply_modality_lut(extremes, ds)), ds)
    return _to_uint8(voi, float(np.min(ends)), float(np.max(ends)))


def _as_integers_if_whole(values: np.ndarray) -> np.ndarray:
    """Integer-valued floats (Rescale Slope 1, Intercept 0) back to int64: pydicom's VOI LUT wants integers."""
    if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.rint(values)):
        return values.astype(np.int64)
    return values
