"""Image loading: PNG/JPEG/DICOM to 8-bit greyscale, DICOM windowing, and clean refusals of hostile input."""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from dicom_files import make_dicom as _dicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID, generate_uid

from chexreason.images import (
    MAX_PIXELS,
    MIN_SIDE,
    ImageError,
    ImageInfo,
    inspect_image,
    load_image,
    load_image_with_info,
)

REPO = Path(__file__).resolve().parents[1]
REAL_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-cxr"
# Sample files installed with pydicom itself (not its download-on-demand set), used as decoder fixtures.
PYDICOM_SAMPLES = Path(pydicom.data.__file__).parent / "test_files"


# ---------------------------------------------------------------------------------------------- helpers


def _gray(image: Image.Image | ImageError) -> np.ndarray:
    """The pixels of a loaded image as an int array, so differences do not wrap around."""
    assert isinstance(image, Image.Image) and image.mode == "L"
    return np.asarray(image).astype(np.int64)


def _ramp(height: int = 64, width: int = 64, top: int = 255) -> np.ndarray:
    """A left-to-right ramp from 0 to `top`: every row spans the full range."""
    return np.tile(np.linspace(0, top, width).round().astype(np.int64), (height, 1))


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for an 8-bit greyscale image of any declared size, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to declare another size."""
    data = bytearray(_encode(Image.fromarray(_ramp().astype(np.uint8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _noise(size: int = 256) -> Image.Image:
    """Incompressible pixels, so cutting an encoded file cuts into its pixel data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _encapsulated_dicom(frame: bytes, syntax: str, rows: int, columns: int, bits_stored: int) -> bytes:
    """A greyscale DICOM file whose one frame is already compressed with `syntax`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _jpeg_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """Encode greyscale `pixels` as lossless JPEG (ITU-T T.81 process 14, predictor 1 = left neighbour).

    Nothing installable here encodes it (pydicom has no encoder, Pillow cannot, pylibjpeg-libjpeg only
    decodes) and pydicom's installed samples have no such file, so the test writes the bitstream itself:
    one Huffman table giving each difference category 0..16 a 5-bit code.
    """
    rows, columns = pixels.shape
    values = pixels.astype(np.int64)
    bits: list[str] = []
    for y in range(rows):
        for x in range(columns):
            # T.81 H.1.2.1: the first sample is predicted from half range, each line's first from above.
            first = 1 << (precision - 1) if y == 0 else values[y - 1, 0]
            predicted = values[y, x - 1] if x else first
            difference = int(values[y, x] - predicted) & 0xFFFF
            if difference > 0x8000:
                difference -= 0x10000
            category = abs(difference).bit_length()
            bits.append(format(category, "05b"))
            if 0 < category < 16:
                extra = difference if difference > 0 else difference - 1
                bits.append(format(extra & ((1 << category) - 1), f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    scan = bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)).replace(b"\xff", b"\xff\x00")
    huffman_counts = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes of length 5
    return (
        b"\xff\xd8"
        + b"\xff\xc3"
        + struct.pack(">HBHHBBBB", 11, precision, rows, columns, 1, 1, 0x11, 0)
        + b"\xff\xc4"
        + struct.pack(">HB", 3 + 16 + 17, 0x00)
        + huffman_counts
        + bytes(range(17))
        + b"\xff\xda"
        + struct.pack(">HBBBBBB", 8, 1, 1, 0x00, 1, 0, 0)
        + scan
        + b"\xff\xd9"
    )


def _mediastinum_minus_lungs(pixels: np.ndarray) -> float:
    """Mean brightness of the central vertical strip (spine, mediastinum) minus that of the lung fields."""
    height, width = pixels.shape
    rows = slice(height // 4, 3 * height // 4)
    strips = [pixels[rows, start * width // 20 : (start + 2) * width // 20].mean() for start in (4, 9, 14)]
    right_lung, centre, left_lung = strips
    return float(centre - (right_lung + left_lung) / 2)


def _decodable(syntax: str) -> bool:
    return get_decoder(syntax).is_available


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_cxr() -> Path:
    if not REAL_CXR.is_dir():
        pytest.skip("../shared/data/real-cxr not present: real-image tests need it")
    return REAL_CXR


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_real_nih_pngs(real_cxr: Path, name: str):
    image, info = load_image_with_info(real_cxr / name)
    assert image.mode == "L" and image.size == (512, 512)
    assert info == ImageInfo("PNG", 512, 512, 8, None)


@pytest.mark.parametrize("name", ["siim_pa_monochrome2.dcm", "siim_pa_monochrome1.dcm"])
def test_real_dicoms(real_cxr: Path, name: str):
    image, info = load_image_with_info(real_cxr / name)
    assert image.mode == "L" and image.size == (1024, 1024)
    assert info == ImageInfo("DICOM", 1024, 1024, 8, "PA")


def test_real_monochrome1_is_inverted(real_cxr: Path):
    # The two files hold the same pixels; only the flag differs, so the loaded images must be negatives.
    mono1 = _gray(load_image(real_cxr / "siim_pa_monochrome1.dcm"))
    mono2 = _gray(load_image(real_cxr / "siim_pa_monochrome2.dcm"))
    assert np.abs(mono1 - (255 - mono2)).mean() < 1
    assert np.corrcoef(mono1.ravel(), mono2.ravel())[0, 1] < -0.99


@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png", "siim_pa_monochrome2.dcm"])
def test_real_anatomy_is_the_right_way_round(real_cxr: Path, name: str):
    # Lungs (air) dark, spine and mediastinum bright: proves inversion and windowing are not reversed.
    # (siim_pa_monochrome1.dcm is the MONOCHROME2 file relabelled, so correctly read it is the negative.)
    assert _mediastinum_minus_lungs(_gray(load_image(real_cxr / name))) > 25


def test_real_truncated_png(real_cxr: Path):
    data = (real_cxr / "00000001_000.png").read_bytes()
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------- PNG and JPEG


def _rgba_half_transparent() -> tuple[bytes, np.ndarray]:
    # Left half opaque grey 200, right half transparent *white*: composited on black, the right is 0.
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[:, :32] = (200, 200, 200, 255)
    pixels[:, 32:] = (255, 255, 255, 0)
    expected = np.zeros((64, 64), dtype=np.int64)
    expected[:, :32] = 200
    return _encode(Image.fromarray(pixels, "RGBA"), "PNG"), expected


def _gray_alpha() -> tuple[bytes, np.ndarray]:
    # Grey+alpha: a ramp whose alpha is half everywhere, so the result is half the ramp.
    ramp = _ramp().astype(np.uint8)
    image = Image.merge("LA", [Image.fromarray(ramp), Image.new("L", (64, 64), 128)])
    return _encode(image, "PNG"), (ramp.astype(np.int64) * 128 + 127) // 255


def _png16_12bit() -> tuple[bytes, np.ndarray]:
    # 12-bit data in a 16-bit PNG: a fixed >> 8 would leave it at 0..15, nearly black.
    ramp = _ramp(top=4095).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG"), _ramp()


def _png16_offset() -> tuple[bytes, np.ndarray]:
    # Min..max, not 0..max: data in 1000..3000 still spans 0..255.
    ramp = (1000 + _ramp(top=2000)).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG"), _ramp()


def _png16_constant() -> tuple[bytes, np.ndarray]:
    # A constant 16-bit image has no range to stretch: it maps to 0, not to a division by zero.
    return _encode(Image.fromarray(np.full((64, 64), 3000, dtype=np.uint16)), "PNG"), np.zeros((64, 64))


def _palette() -> tuple[bytes, np.ndarray]:
    # Palette images convert through RGB with PIL's luma: pure red, green, blue in three bands.
    image = Image.new("P", (64, 64))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    indices = np.zeros((64, 64), dtype=np.uint8)
    indices[:, 21:42], indices[:, 42:] = 1, 2
    image.putdata(indices.ravel().tolist())
    return _encode(image, "PNG"), _gray(image.convert("RGB").convert("L"))


def _palette_transparent() -> tuple[bytes, np.ndarray]:
    # A palette PNG with a transparent index (tRNS): that index composites on black like alpha.
    image = Image.new("P", (64, 64))
    image.putpalette([255, 255, 255, 120, 120, 120])
    image.putdata([0] * 2048 + [1] * 2048)
    expected = np.zeros((64, 64), dtype=np.int64)
    expected[32:] = 120
    return _encode(image, "PNG", transparency=0), expected


def _rgb() -> tuple[bytes, np.ndarray]:
    # Colour converts with ITU-R 601 luma (PIL's "L"), e.g. a screenshot of a viewer.
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[..., 0] = _ramp()
    pixels[..., 2] = 255 - _ramp()
    image = Image.fromarray(pixels, "RGB")
    return _encode(image, "PNG"), _gray(image.convert("L"))


def _one_bit() -> tuple[bytes, np.ndarray]:
    # 1-bit PNGs become 0/255.
    image = Image.fromarray(_ramp() > 127)
    return _encode(image, "PNG"), np.where(_ramp() > 127, 255, 0)


@pytest.mark.parametrize(
    ("make", "bits"),
    [
        pytest.param(_rgba_half_transparent, 8, id="rgba-on-black"),
        pytest.param(_gray_alpha, 8, id="gray-alpha-on-black"),
        pytest.param(_png16_12bit, 16, id="png16-12bit-range"),
        pytest.param(_png16_offset, 16, id="png16-min-max"),
        pytest.param(_png16_constant, 16, id="png16-constant"),
        pytest.param(_palette, 2, id="palette"),
        pytest.param(_palette_transparent, 1, id="palette-transparency"),
        pytest.param(_rgb, 8, id="rgb-luma"),
        pytest.param(_one_bit, 1, id="one-bit"),
    ],
)
def test_png_modes_convert_to_gray(make: Callable[[], tuple[bytes, np.ndarray]], bits: int):
    data, expected = make()
    image, info = load_image_with_info(data)
    assert info == ImageInfo("PNG", 64, 64, bits, None)
    assert np.abs(_gray(image) - expected).max() <= 1


def test_png16_uses_the_full_range():
    image = load_image(_png16_12bit()[0])
    assert _gray(image).min() == 0 and _gray(image).max() == 255


def test_cmyk_jpeg():
    # CMYK JPEGs (Adobe convention, inverted on disk) load: white left half, black right half.
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[:, 32:, 3] = 255
    data = _encode(Image.fromarray(pixels, "CMYK"), "JPEG", quality=95)
    gray = _gray(load_image(data))
    assert gray[:, :28].min() >= 245 and gray[:, 36:].max() <= 10


def test_progressive_jpeg():
    source = Image.fromarray(_ramp().astype(np.uint8))
    data = _encode(source, "JPEG", quality=95, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")  # it really is progressive
    image, info = load_image_with_info(data)
    assert info == ImageInfo("JPEG", 64, 64, 8, None)
    assert np.abs(_gray(image) - _ramp()).max() <= 6


def test_jpeg_exif_orientation_is_applied():
    # A phone photo of a film stored sideways with EXIF "rotate 90°": loaded upright, as viewers show it.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.new("L", (80, 40), 100), "JPEG", exif=exif.tobytes())
    image, info = load_image_with_info(data)
    assert image.size == (40, 80) and (info.width, info.height) == (40, 80)


def test_format_comes_from_content_not_name(tmp_path: Path):
    path = tmp_path / "scan.jpg"
    path.write_bytes(_encode(Image.new("L", (64, 64), 9), "PNG"))
    assert inspect_image(path).format == "PNG"


@pytest.mark.parametrize(
    "as_source",
    [
        pytest.param(lambda path: str(path), id="str"),
        pytest.param(lambda path: path, id="path"),
        pytest.param(lambda path: path.read_bytes(), id="bytes"),
        pytest.param(lambda path: bytearray(path.read_bytes()), id="bytearray"),
        pytest.param(lambda path: memoryview(path.read_bytes()), id="memoryview"),
        pytest.param(lambda path: io.BytesIO(path.read_bytes()), id="bytesio"),
    ],
)
def test_every_kind_of_source(tmp_path: Path, as_source: Callable[[Path], object]):
    path = tmp_path / "ramp.png"
    path.write_bytes(_encode(Image.fromarray(_ramp().astype(np.uint8)), "PNG"))
    assert np.array_equal(_gray(load_image(as_source(path))), _ramp())


def test_open_binary_file(tmp_path: Path):
    path = tmp_path / "ramp.png"
    path.write_bytes(_encode(Image.fromarray(_ramp().astype(np.uint8)), "PNG"))
    with path.open("rb") as file:
        assert np.array_equal(_gray(load_image(file)), _ramp())


# ---------------------------------------------------------------------------------------------- DICOM


def test_dicom_window_and_rescale():
    # Stored 12-bit values; Rescale 2·s − 1024 (CT-like units); window centre 0, width 400 = [−200, 200].
    stored = np.full((64, 64), 512, dtype=np.uint16)  # 2·512 − 1024 = 0: the window's centre
    stored[:, :16] = 100  # −824: below the window → 0
    stored[:, 48:] = 1000  # 976: above the window → 255
    stored[:, 16:48] = 462 + np.arange(32) * 100 // 31  # −100..100: inside, increasing
    data = _dicom(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400)
    gray = _gray(load_image(data))
    assert (gray[:, :16] == 0).all() and (gray[:, 48:] == 255).all()
    inside = gray[0, 16:48]
    assert (np.diff(inside) >= 0).all() and inside.min() >= 55 and inside.max() <= 200


def test_dicom_window_is_not_restretched():
    # An image entirely inside its window keeps the window's grey levels: the window's ends map to 0 and
    # 255, not the image's own min..max (which would turn a narrow mid-grey ramp into black..white).
    stored = (2000 + _ramp(top=100)).astype(np.uint16)
    gray = _gray(load_image(_dicom(stored, WindowCenter=2048, WindowWidth=4096)))
    assert gray.min() >= 120 and gray.max() <= 135


def test_dicom_voi_lut_sequence_preferred_over_window():
    # A VOI LUT (here: inverting) is applied in preference to the window, as pydicom and viewers do.
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = list(range(4095, -1, -1))
    lut["LUTDescriptor"].VR = "US"
    lut["LUTData"].VR = "US"
    data = _dicom(_ramp(top=4095).astype(np.uint16), VOILUTSequence=[lut], WindowCenter=100, WindowWidth=10)
    assert np.abs(_gray(load_image(data)) - (255 - _ramp())).max() <= 1


def test_dicom_without_voi_uses_min_max():
    data = _dicom((1000 + _ramp(top=2000)).astype(np.uint16))
    image, info = load_image_with_info(data)
    assert np.abs(_gray(image) - _ramp()).max() <= 1
    assert info == ImageInfo("DICOM", 64, 64, 12, None)


def test_dicom_monochrome1_inverted_and_view():
    stored = _ramp(top=4095).astype(np.uint16)
    mono2 = _gray(load_image(_dicom(stored, "MONOCHROME2", ViewPosition="AP")))
    image, info = load_image_with_info(_dicom(stored, "MONOCHROME1", ViewPosition="LL"))
    assert np.array_equal(_gray(image), 255 - mono2)
    assert info.view == "LL"


def test_dicom_without_preamble_is_read_by_content_or_name(tmp_path: Path):
    # Old files start straight with the dataset (no 128-byte preamble, no "DICM"): read by their first tag, or name.
    ds = Dataset()
    ds.set_pixel_data(_ramp().astype(np.uint16), "MONOCHROME2", 8)
    ds.file_meta = FileMetaDataset()  # no meta header either: nothing says "DICOM" but the name
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    data = buffer.getvalue()
    assert data[128:132] != b"DICM"
    path = tmp_path / "old.dcm"
    path.write_bytes(data)
    assert np.array_equal(_gray(load_image(path)), _ramp())
    with path.open("rb") as file:
        assert inspect_image(file).format == "DICOM"  # the file object's name counts too
    assert np.array_equal(_gray(load_image(data)), _ramp())  # bytes have no name: the first tag (0028) says it
    with pytest.raises(ImageError, match="not a PNG, JPEG or DICOM"):
        load_image(b"\x28\x00" + bytes(range(200)))  # starts like one, is not one: the usual message


def _mr_small(name: str) -> Path:
    path = PYDICOM_SAMPLES / name
    if not path.is_file():
        pytest.skip(f"pydicom's sample {name} is not installed with pydicom here")
    return path


def _lossless_jpeg_file(tmp_path: Path, syntax: str) -> tuple[Path, np.ndarray]:
    stored = np.random.default_rng(1).integers(0, 4096, (64, 64)).astype(np.uint16)
    stored[:8, :8] = 4095  # differences of every size, including category 12
    path = tmp_path / "lossless.dcm"
    path.write_bytes(_encapsulated_dicom(_jpeg_lossless(stored, 12), syntax, 64, 64, 12))
    return path, stored


@pytest.mark.parametrize(
    ("syntax", "sample"),
    [
        # Each compressed copy of pydicom's MR_small must load exactly as the uncompressed one.
        pytest.param(pydicom.uid.JPEGLSLossless, "MR_small_jpeg_ls_lossless.dcm", id="jpeg-ls-lossless"),
        pytest.param(pydicom.uid.JPEG2000Lossless, "MR_small_jp2klossless.dcm", id="jpeg2000-lossless"),
        pytest.param(pydicom.uid.RLELossless, "MR_small_RLE.dcm", id="rle"),
        pytest.param(pydicom.uid.ExplicitVRBigEndian, "MR_small_bigendian.dcm", id="big-endian"),
    ],
)
def test_compressed_dicom_samples(syntax: str, sample: str):
    if not _decodable(syntax):
        pytest.skip(f"no decoder for {UID(syntax).name} installed (pip install pylibjpeg pylibjpeg-libjpeg)")
    path = _mr_small(sample)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(_gray(load_image(path)), _gray(load_image(_mr_small("MR_small.dcm"))))


@pytest.mark.parametrize("syntax", [pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGLossless], ids=["sv1", "p14"])
def test_jpeg_lossless_dicom(tmp_path: Path, syntax: str):
    # JPEG Lossless (1.2.840.10008.1.2.4.70 and .57): the commonest compression of CR/DX archives.
    if not _decodable(syntax):
        pytest.skip(f"no decoder for {UID(syntax).name} installed (pip install pylibjpeg pylibjpeg-libjpeg)")
    path, stored = _lossless_jpeg_file(tmp_path, syntax)
    assert np.array_equal(pydicom.dcmread(path).pixel_array, stored)  # the hand-written encoder is right
    image, info = load_image_with_info(path)
    assert np.abs(_gray(image) - (stored.astype(np.float64) * 255 / 4095)).max() <= 0.5
    assert info == ImageInfo("DICOM", 64, 64, 12, None)


def test_jpeg_extended_12bit_dicom():
    # 12-bit JPEG (process 4): Pillow cannot decode it; pylibjpeg-libjpeg can.
    if (
        not _decodable(pydicom.uid.JPEGExtended12Bit)
        or "pylibjpeg" not in get_decoder(pydicom.uid.JPEGExtended12Bit).available_plugins
    ):
        pytest.skip("12-bit JPEG needs pylibjpeg + pylibjpeg-libjpeg, not installed")
    image, info = load_image_with_info(_mr_small("JPGExtended.dcm"))
    assert image.size == (256, 1024) and info.bits == 12


# Runs in a fresh interpreter where the optional decoders' imports fail exactly as if not installed.
_WITHOUT_DECODERS = """
import sys
for module in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "jpeg_ls"):
    sys.modules[module] = None  # "import module" now raises ImportError, as for a missing package
from chexreason.images import ImageError, load_image
for path in sys.argv[1:]:
    try:
        load_image(path)
        print("loaded")
    except ImageError as err:
        print(err)
"""


def test_missing_decoder_names_the_package(tmp_path: Path):
    lossless, _ = _lossless_jpeg_file(tmp_path, pydicom.uid.JPEGLosslessSV1)
    paths = [str(_mr_small("MR_small_jpeg_ls_lossless.dcm")), str(lossless)]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DECODERS, *paths], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    for line, syntax in zip(lines, ["JPEG-LS Lossless", "JPEG Lossless"], strict=True):
        assert syntax in line and "no decoder for it is installed" in line
        assert "pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1" in line  # pydicom's report: what to install


# ---------------------------------------------------------------------------------------------- hostile input


def _truncated_pixel_dicom(**elements: object) -> bytes:
    # Pixel data cut to 100 bytes: pydicom's own error is chained under the ImageError.
    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp(top=4095).astype(np.uint16), **elements)))
    ds.PixelData = ds.PixelData[:100]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    return buffer.getvalue()


def _mpeg2_dicom() -> bytes:
    # MPEG-2 video: a valid transfer syntax for which pydicom has no decoder at all.
    return _encapsulated_dicom(bytes(64), pydicom.uid.MPEG2MPML, 64, 64, 8)


HOSTILE = [
    # What a person may upload by mistake: each must say what is wrong, not show a traceback.
    pytest.param(lambda tmp: tmp / "empty.png", "empty", id="zero-bytes"),
    pytest.param(lambda tmp: tmp / "notes.png", "It holds text despite its '.png' name", id="text-named-png"),
    pytest.param(lambda tmp: np.random.default_rng(2).bytes(4096), "not a PNG, JPEG or DICOM", id="random-bytes"),
    pytest.param(lambda tmp: _encode(Image.new("L", (64, 64)), "TIFF"), "It holds a TIFF image", id="tiff"),
    pytest.param(lambda tmp: tmp / "garbage.dcm", "not a PNG, JPEG or DICOM", id="garbage-named-dcm"),
    pytest.param(lambda tmp: tmp / "nowhere.png", "No image file", id="missing-path"),
    # Truncation inside the pixel data: PIL only notices on load(), which must run inside the boundary.
    pytest.param(lambda tmp: _first_half(_encode(_noise(), "PNG")), "truncated or damaged", id="truncated-png"),
    pytest.param(lambda tmp: _first_half(_encode(_noise(), "JPEG")), "truncated", id="truncated-jpeg"),
    pytest.param(lambda tmp: _encode(_noise(), "PNG")[:20], "truncated or damaged", id="truncated-png-header"),
    pytest.param(lambda tmp: b"\x89PNG\r\n\x1a\n" + bytes(64), "header is damaged", id="png-magic-then-zeros"),
    # Decompression bombs, refused from the header before decoding: by our MAX_PIXELS, by PIL's
    # DecompressionBombWarning band (> 89 MP) and by its DecompressionBombError band (> 179 MP).
    pytest.param(lambda tmp: _png_declaring(8000, 8000), "declares 8000 × 8000 pixels", id="huge-png-ours"),
    pytest.param(lambda tmp: _png_declaring(10_000, 10_000), "decompression bomb", id="huge-png-pil-warning"),
    pytest.param(lambda tmp: _png_declaring(100_000, 100_000), "decompression bomb", id="huge-png-pil-error"),
    pytest.param(lambda tmp: _jpeg_declaring(8000, 8000), "refused before decoding", id="huge-jpeg"),
    pytest.param(lambda tmp: _encode(Image.new("L", (8, 8)), "PNG"), f"at least {MIN_SIDE} × {MIN_SIDE}", id="tiny"),
    # DICOM objects that are not one greyscale image, or whose pixels cannot be decoded.
    pytest.param(
        lambda tmp: _dicom(None, SOPClassUID=pydicom.uid.BasicTextSRStorage), "Basic Text SR", id="dicom-report"
    ),
    pytest.param(lambda tmp: _dicom(np.zeros((3, 64, 64), np.uint16)), "holds 3 frames", id="dicom-multiframe"),
    pytest.param(lambda tmp: _dicom(np.zeros((64, 64, 3), np.uint8), "RGB", 8), "not greyscale", id="dicom-rgb"),
    pytest.param(
        lambda tmp: _dicom(np.zeros((64, 64), np.uint16), Rows=10_000, Columns=10_000),
        "refused before decoding",
        id="dicom-huge-header",
    ),
    pytest.param(lambda tmp: _dicom(np.zeros((8, 8), np.uint16)), "only 8 × 8 pixels", id="dicom-tiny"),
    pytest.param(lambda tmp: _truncated_pixel_dicom(), "could not be decoded", id="dicom-truncated-pixels"),
    pytest.param(lambda tmp: _mpeg2_dicom(), "cannot be decoded here", id="dicom-video-syntax"),
]


@pytest.fixture
def hostile_files(tmp_path: Path) -> Path:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("these are my notes, not an image\n")
    (tmp_path / "garbage.dcm").write_bytes(np.random.default_rng(4).bytes(2048))
    return tmp_path


@pytest.mark.parametrize(("make", "message"), HOSTILE)
def test_hostile_input_raises_image_error(hostile_files: Path, make: Callable[[Path], object], message: str):
    with pytest.raises(ImageError, match=message):
        load_image(make(hostile_files))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _png16_12bit()[0], id="png16"),
        pytest.param(lambda: _encode(_noise(64).convert("RGB"), "JPEG"), id="jpeg"),
        pytest.param(lambda: _dicom(_ramp(top=4095).astype(np.uint16), WindowCenter=99, WindowWidth=50), id="dicom"),
    ],
)
def test_corrupted_bytes_never_escape_as_other_errors(make: Callable[[], bytes]):
    # A small seeded fuzz: cut or overwrite bytes anywhere; the result loads or raises ImageError, nothing else.
    data, rng = make(), np.random.default_rng(5)
    for trial in range(60):
        if trial % 2:
            mutated = bytearray(data[: int(rng.integers(1, len(data)))])
        else:
            mutated = bytearray(data)
            for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
                mutated[int(position)] = int(rng.integers(0, 256))
        with contextlib.suppress(ImageError):
            assert load_image(bytes(mutated)).mode == "L"


def test_max_pixels_is_above_any_chest_xray():
    assert 4300 * 4300 < MAX_PIXELS <= 100_000_000


def test_text_mode_file_is_refused(tmp_path: Path):
    path = tmp_path / "x.png"
    path.write_bytes(_encode(Image.new("L", (64, 64)), "PNG"))
    with path.open(encoding="latin-1") as file, pytest.raises(ImageError, match="binary mode"):
        load_image(file)


# ---------------------------------------------------------------------------------------------- privacy

_PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-31337", "PatientBirthDate": "19700101"}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _dicom(np.zeros((3, 64, 64), np.uint16), **_PATIENT), id="multiframe"),
        pytest.param(lambda: _dicom(np.zeros((64, 64, 3), np.uint8), "RGB", 8, **_PATIENT), id="rgb"),
        pytest.param(lambda: _dicom(None, **_PATIENT), id="no-pixels"),
        pytest.param(lambda: _truncated_pixel_dicom(**_PATIENT), id="truncated-pixels"),
        pytest.param(lambda: _dicom(np.zeros((64, 64), np.uint16), Rows=9999, Columns=9999, **_PATIENT), id="huge"),
    ],
)
def test_errors_never_quote_patient_data(make: Callable[[], bytes], caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImageError) as caught:
        load_image(make())
    error: BaseException | None = caught.value
    while error is not None:  # the message and everything chained to it
        for secret in ("Doe", "Jane", "31337", "19700101"):
            assert secret not in str(error)
        error = error.__cause__ or error.__context__
    assert "Doe" not in caplog.text and "31337" not in caplog.text


def test_success_returns_and_logs_nothing_identifying(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    data = _dicom(_ramp(top=4095).astype(np.uint16), ViewPosition="PA", **_PATIENT)
    image, info = load_image_with_info(data)
    assert info == ImageInfo("DICOM", 64, 64, 12, "PA")
    assert "Doe" not in caplog.text and "31337" not in caplog.text
    assert not image.info  # no metadata travels with the pixels


def test_inspect_image_matches_load():
    data = _dicom(_ramp(top=4095).astype(np.uint16), ViewPosition="LATERAL")
    assert inspect_image(data) == load_image_with_info(data)[1] == ImageInfo("DICOM", 64, 64, 12, "LATERAL")


def test_max_pixels_constant_used_for_dicom():
    # Exactly at the limit's edge: one row over MAX_PIXELS is refused before any pixel is decoded.
    columns = 10_000
    rows = MAX_PIXELS // columns + 1
    data = _dicom(np.zeros((64, 64), np.uint16), Rows=rows, Columns=columns)
    with pytest.raises(ImageError, match="refused before decoding"):
        load_image(data)
