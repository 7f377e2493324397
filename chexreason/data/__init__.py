"""Dataset readers (MIMIC-CXR-JPG, CheXpert, NIH ChestX-ray14); see `chexreason.data.readers`."""

from chexreason.data.readers import (
    DatasetError,
    Problem,
    ReadResult,
    ReadSummary,
    Record,
    apply_uncertainty,
    read_chexpert,
    read_mimic,
    read_nih,
)

__all__ = [
    "DatasetError",
    "Problem",
    "ReadResult",
    "ReadSummary",
    "Record",
    "apply_uncertainty",
    "read_chexpert",
    "read_mimic",
    "read_nih",
]
