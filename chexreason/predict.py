"""Label chest X-ray files with every checkpoint of a model set, from the command line.

    python -m chexreason.predict scans/ extra.dcm --models tiny --out preds.csv
    python -m chexreason.predict scans/ --models my_set.yaml --out preds.jsonl --prompt reasoning_a

Every file named, and every file under a folder named (recursively, hidden files skipped), is read by
content with `chexreason.images.load_image_with_info`: PNG, JPEG and DICOM, whatever the extension. A
file that cannot be read is reported in the output with the loader's message rather than stopping the
run, because one damaged file in a folder of thousands should not cost the rest.

The output has one row per (file, checkpoint), written as each batch finishes:

- ``file``, ``checkpoint``, ``prompt`` (the prompt key it was asked with);
- ``labels``: the canonical CheXpert labels `chexreason.parsing.parse_completion` read (CSV: ``; ``-joined);
- ``parseable``, ``valid``: the parser's two notions (empty / null for an unreadable file);
- ``error``: the parser's error, or the image loader's message for an unreadable file;
- ``output``: the full completion text.

A summary follows on standard output. The exit status is non-zero only for usage errors (no such input,
unknown model set or prompt, unsupported output suffix). Research software, not for diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from PIL import Image
from tqdm.auto import tqdm

from chexreason.images import ImageError, load_image_with_info
from chexreason.labels import in_canonical_order
from chexreason.modeling import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    ModelSet,
    ModelSetError,
    load_model_set,
    parse_dtype,
    read_model_set,
)
from chexreason.parsing import parse_completion
from chexreason.prompts import get_prompt

logger = logging.getLogger(__name__)

FIELDS = ("file", "checkpoint", "prompt", "labels", "parseable", "valid", "error", "output")
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


class UsageError(ValueError):
    """A command line that cannot run (exit status 2)."""


def find_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files to label: each file as given, and each folder's files recursively (sorted, hidden ones skipped).

    Raises:
        UsageError: a path does not exist.
    """
    files: dict[Path, None] = {}  # ordered, without repeats
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
            files.update(dict.fromkeys(sorted(found)))
        elif path.is_file():
            files[path] = None
        else:
            raise UsageError(f"no such file or folder: {path}")
    return list(files)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


@dataclass
class Summary:
    """Counts for the end-of-run report."""

    checkpoints: Sequence[str]
    files: int = 0
    unreadable: int = 0
    outputs: Counter = field(default_factory=Counter)
    unparseable: Counter = field(default_factory=Counter)
    invalid: Counter = field(default_factory=Counter)
    labels: dict[str, Counter] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        name = row["checkpoint"]
        if row["parseable"] is None:
            return
        self.outputs[name] += 1
        self.unparseable[name] += not row["parseable"]
        self.invalid[name] += not row["valid"]
        self.labels.setdefault(name, Counter()).update(row["labels"])

    def render(self) -> str:
        lines = [f"Read {self.files - self.unreadable} of {self.files} files ({self.unreadable} unreadable)."]
        for name in self.checkpoints:
            n = self.outputs[name]
            if not n:
                lines.append(f"  {name}: no outputs")
                continue
            counts = self.labels.get(name, Counter())
            labels = ", ".join(f"{label} {counts[label]}" for label in in_canonical_order(counts)) or "none"
            lines.append(
                f"  {name}: {n} outputs, fail rate {self.unparseable[name] / n:.1%} (unparseable), "
                f"invalid format {self.invalid[name] / n:.1%}; labels: {labels}"
            )
        return "\n".join(lines)


class RowWriter:
    """Writes prediction rows as CSV (the csv module) or JSON Lines, flushing after each batch."""

    def __init__(self, stream: TextIO, kind: str) -> None:
        self.stream = stream
        self.kind = kind
        if kind == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=FIELDS)
            self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.kind == "jsonl":
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        flat = dict(row)
        flat["labels"] = "; ".join(row["labels"])
        for key in ("parseable", "valid", "error"):
            flat[key] = "" if row[key] is None else row[key]
        self._csv.writerow(flat)

    def flush(self) -> None:
        self.stream.flush()


def _chunks(files: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def _read(path: Path) -> Image.Image | str:
    """The image, or why it could not be read."""
    try:
        image, _ = load_image_with_info(path)
    except ImageError as err:
        return str(err)
    except OSError as err:  # permissions, a file removed mid-run
        return f"could not read the file ({err.strerror or err})"
    return image


def _rows_for(
    path: Path, texts: Sequence[str] | str, model_set: ModelSet, prompt: str | None
) -> Iterator[dict[str, Any]]:
    """One row per checkpoint: parsed outputs, or the image error repeated for an unreadable file."""
    for j, name in enumerate(model_set.checkpoints):
        variant = model_set.prompt_for(name, prompt)
        row = {"file": str(path), "checkpoint": name, "prompt": variant.key}
        if isinstance(texts, str):
            row |= {"labels": [], "parseable": None, "valid": None, "error": texts, "output": ""}
        else:
            parsed = parse_completion(texts[j], variant.protocol)
            row |= {
                "labels": list(parsed.labels),
                "parseable": parsed.parseable,
                "valid": parsed.valid,
                "error": parsed.error,
                "output": texts[j],
            }
        yield row


def predict_files(
    files: Sequence[Path],
    model_set: ModelSet,
    writer: RowWriter,
    prompt: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> Summary:
    """Label `files` batch by batch, writing rows as they come; returns the summary counts.

    ``max_new_tokens=None``: each checkpoint's own budget, as its model set records it (and evaluation used).
    """
    summary = Summary(model_set.checkpoints, files=len(files))
    settings = GenerationSettings(max_new_tokens)  # greedy
    with tqdm(total=len(files), unit="file", desc="labelling", disable=not progress) as bar:
        for chunk in _chunks(files, batch_size):
            loaded = {path: _read(path) for path in chunk}
            readable = [path for path, value in loaded.items() if isinstance(value, Image.Image)]
            outputs = model_set.generate([loaded[p] for p in readable], prompt=prompt, settings=settings)
            texts: dict[Path, Sequence[str] | str] = dict(zip(readable, outputs, strict=True))
            for path in chunk:
                if path not in texts:
                    summary.unreadable += 1
                    logger.warning("unreadable: %s: %s", path, loaded[path])
                result = texts[path] if path in texts else str(loaded[path])
                for row in _rows_for(path, result, model_set, prompt):
                    writer.write(row)
                    summary.add(row)
            writer.flush()
            bar.update(len(chunk))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chexreason.predict",
        description="Label chest X-rays (PNG, JPEG, DICOM) with every checkpoint of a model set. Not for diagnosis.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--models", required=True, help="model-set name (e.g. tiny) or YAML file")
    parser.add_argument("--out", required=True, type=Path, help="output file: .csv or .jsonl")
    parser.add_argument("--prompt", help="ask every checkpoint with this prompt key instead of its own")
    parser.add_argument("--batch-size", type=int, default=4, help="images per generate call (default 4)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation budget (default: each checkpoint's own, as its model set records it; "
        f"{DEFAULT_MAX_NEW_TOKENS} where it records none)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", help="weights' dtype, e.g. bfloat16 (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _check_arguments(args: argparse.Namespace) -> tuple[list[Path], str]:
    kind = FORMATS.get(args.out.suffix.lower())
    if kind is None:
        raise UsageError(f"--out must end in {' or '.join(FORMATS)}, got {args.out}")
    if args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise UsageError("--batch-size and --max-new-tokens must be at least 1")
    if args.dtype is not None:
        try:
            parse_dtype(args.dtype)
        except ValueError:
            raise UsageError(
                f"--dtype must be a torch dtype such as float32 or bfloat16, got {args.dtype!r}"
            ) from None
    if args.prompt is not None:
        try:
            get_prompt(args.prompt)
        except ValueError as err:
            raise UsageError(str(err)) from None
    files = find_files(args.inputs)
    if not files:
        raise UsageError(f"no files found in {', '.join(args.inputs)}")
    return files, kind


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on malformed arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files, kind = _check_arguments(args)
        spec = read_model_set(args.models)
    except (UsageError, ModelSetError) as err:
        parser.error(str(err))
    model_set = load_model_set(spec, device=args.device, dtype=args.dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as stream:
        summary = predict_files(
            files,
            model_set,
            RowWriter(stream, kind),
            prompt=args.prompt,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
        )
    print(summary.render())
    print(f"Wrote {len(files) * len(model_set.checkpoints)} rows to {args.out}. Research output, not a diagnosis.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
