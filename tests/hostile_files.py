"""Hostile image files, generated (none is committed): codestreams that disagree with their DICOM header, a
deflate bomb, a JPEG cut short after a large header, a DICOM without its preamble."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit


def jpeg(width: int, height: int, value: int = 90) -> bytes:
    """A flat greyscale JPEG: the least data a complete image of its size has."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header claiming another size."""
    at = data.index(b"\xff\xc0") + 5
    return data[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 4 :]


def siz_codestream(width: int, height: int) -> bytes:
    """The first bytes of a JPEG 2000 codestream: SOC and a SIZ segment for one 8-bit component."""
    siz = (b"\x00\x00" + b"".join(v.to_bytes(4, "big") for v in (width, height, 0, 0, width, height, 0, 0))
           + b"\x00\x01" + b"\x07\x01\x01")  # fmt: skip
    return b"\xff\x4f\xff\x51" + (len(siz) + 2).to_bytes(2, "big") + siz + b"\xff\x90" + bytes(40)


def encapsulated_dicom(frame: bytes, syntax: str, rows: int = 64, columns: int = 64) -> bytes:
    """An 8-bit greyscale DICOM whose one compressed frame is `frame`, whatever it says, under Rows × Columns."""
    ds = _dataset(syntax)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _write(ds)


def plain_dicom(pixels: np.ndarray, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """An 8-bit greyscale DICOM of `pixels` (pydicom deflates the dataset for the deflated syntax)."""
    ds = _dataset(ExplicitVRLittleEndian)
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    ds.file_meta.TransferSyntaxUID = syntax
    return _write(ds)


def jpeg_bomb_dicom() -> bytes:
    """~1 KB: Rows/Columns 64 × 64, its JPEG frame 30000 × 30000 (900 megapixels if decoded)."""
    return encapsulated_dicom(with_sof_size(jpeg(64, 64), 30000, 30000), JPEGBaseline8Bit)


def j2k_bomb_dicom() -> bytes:
    """Rows/Columns 64 × 64, its JPEG 2000 codestream 12000 × 12000."""
    return encapsulated_dicom(siz_codestream(12000, 12000), JPEG2000Lossless)


def deflate_bomb_dicom(inflated_mib: int) -> bytes:
    """A real deflated DICOM followed by `inflated_mib` MiB of zeros inside its deflate stream (~1 KB per MiB)."""
    whole = plain_dicom(np.zeros((64, 64), np.uint8))
    meta_end = 132 + 12 + int.from_bytes(whole[140:144], "little")
    ds = pydicom.dcmread(io.BytesIO(whole), stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(whole[meta_end:]) + b"".join(deflater.compress(bytes(2**20)) for _ in range(inflated_mib))
    return whole[:132] + meta.getvalue() + body + deflater.flush()


def truncated_jpeg(width: int = 4000, height: int = 4000) -> bytes:
    """A JPEG header for `width` × `height`, a few bytes of image data and an end marker: libjpeg fills the rest."""
    whole = jpeg(width, height)
    return whole[: whole.index(b"\xff\xda") + 60] + b"\xff\xd9"


def preambleless_dicom(pixels: np.ndarray) -> bytes:
    """An old-style DICOM: the dataset straight away, no 128-byte preamble, no "DICM", no file meta."""
    ds = Dataset()
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    ds.file_meta = FileMetaDataset()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def _dataset(syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "DX"
    return ds


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
