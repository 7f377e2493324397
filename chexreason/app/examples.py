"""The example phantoms offered in the app, with their ground truth.

    python -m chexreason.app.examples      # (re)writes chexreason/app/examples/

The examples are the first three test phantoms of each site in the bundled evaluation (the records of
checkpoints/tiny/eval.json: held out from training, not picked for looks), drawn by `chexreason.data.phantom` at
the test size. A test regenerates them and checks
the bundled files match. Ground truth is looked up by the SHA-256 of an upload's bytes, so it is shown only
for the bundled files themselves, never for an upload that merely shares a file name.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from chexreason.data.phantom import PhantomSample, generate

EXAMPLES_DIR = Path(__file__).parent / "examples"
INDEX_FILE = EXAMPLES_DIR / "examples.json"
SITE_NAMES = {"a": "site a (CheXpert-like, in-distribution)", "b": "site b (NIH-like, cross-dataset)"}

# The first three test phantoms of each site in checkpoints/tiny/eval.records.jsonl (a test checks this), drawn
# at the tiny recipe's image_size (train/recipes/tiny/data.yaml).
EXAMPLE_IDS = (
    "phantom-a-0-003104",
    "phantom-a-0-003105",
    "phantom-a-0-003106",
    "phantom-b-0-000000",
    "phantom-b-0-000001",
    "phantom-b-0-000002",
)
IMAGE_SIZE = 224


@dataclass(frozen=True)
class Example:
    """One bundled example.

    Attributes:
        id: the phantom's id (``phantom-<site>-<seed>-<index>``).
        site: "a" or "b".
        path: the PNG file.
        sha256: of the PNG file's bytes.
        truth: positive CheXpert labels.
        unscored: CheXpert labels the site cannot say anything about (site b: outside NIH's annotation).
    """

    id: str
    site: str
    path: Path
    sha256: str
    truth: tuple[str, ...]
    unscored: tuple[str, ...] = ()

    @property
    def caption(self) -> str:
        return f"{self.id} — truth: {', '.join(self.truth) or 'none'}"


def _truth(sample: PhantomSample) -> tuple[tuple[str, ...], tuple[str, ...]]:
    labels = sample.chexpert_labels()
    truth = tuple(label for label, value in labels.items() if value == 1.0)
    unscored = tuple(label for label, value in labels.items() if isinstance(value, float) and math.isnan(value))
    return truth, unscored


def draw_examples() -> list[tuple[PhantomSample, bytes]]:
    """The example phantoms and their PNG bytes, drawn from scratch."""
    out = []
    for example_id in EXAMPLE_IDS:
        _, site, seed, index = example_id.split("-")
        [sample] = generate(site, 1, seed=int(seed), size=IMAGE_SIZE, start=int(index))
        buffer = io.BytesIO()
        sample.image.save(buffer, format="PNG")
        out.append((sample, buffer.getvalue()))
    return out


def write_examples(folder: Path = EXAMPLES_DIR) -> None:
    """Draw the examples and write their PNGs and `examples.json` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for sample, png in draw_examples():
        (folder / f"{sample.id}.png").write_bytes(png)
        truth, unscored = _truth(sample)
        index.append(
            {
                "id": sample.id,
                "site": sample.site,
                "file": f"{sample.id}.png",
                "sha256": hashlib.sha256(png).hexdigest(),
                "truth": list(truth),
                "unscored": list(unscored),
            }
        )
    (folder / INDEX_FILE.name).write_text(json.dumps(index, indent=2) + "\n")


@cache
def load_examples(folder: Path = EXAMPLES_DIR) -> tuple[Example, ...]:
    """The bundled examples, in display order (site a first)."""
    entries = json.loads((folder / INDEX_FILE.name).read_text())
    return tuple(
        Example(e["id"], e["site"], folder / e["file"], e["sha256"], tuple(e["truth"]), tuple(e["unscored"]))
        for e in entries
    )


def example_for(data: bytes) -> Example | None:
    """The bundled example whose file has exactly these bytes, if any."""
    digest = hashlib.sha256(data).hexdigest()
    return next((example for example in load_examples() if example.sha256 == digest), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR, help="folder to write (default: the bundled one)")
    write_examples(parser.parse_args().out)


if __name__ == "__main__":
    main()
