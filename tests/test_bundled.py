"""The bundled tiny checkpoints load, and re-evaluating them reproduces their bundled results."""

from pathlib import Path

import pytest

from chexreason.data.config import read_data_config
from chexreason.data.phantom import generate
from chexreason.metrics import score
from chexreason.modeling import load_model_set
from chexreason.parsing import parse_completion
from chexreason.results import load_results

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny"
SUBSET = 6  # images per split re-generated and re-scored

pytestmark = pytest.mark.skipif(
    not (BUNDLED / "eval.json").exists(), reason="checkpoints/tiny not produced yet (python -m train.grpo ...)"
)


def _phantom(image_id: str, size: int):
    # ids are phantom-<site>-<seed>-<index>: the generator redraws exactly that film.
    _, site, seed, index = image_id.split("-")
    return generate(site, 1, seed=int(seed), size=size, start=int(index))[0].image.convert("RGB")


def test_bundled_files_are_small_enough_for_the_hub():
    assert all(path.stat().st_size < 10 * 2**20 for path in BUNDLED.rglob("*") if path.is_file())


@pytest.mark.parametrize("split", ["test_phantom_a", "test_phantom_b"])
def test_reevaluation_reproduces_the_bundled_results(split):
    results = load_results(BUNDLED / "eval.json")
    models = load_model_set(BUNDLED / "model_set.yaml")
    size = read_data_config("train/recipes/tiny/data.yaml").image_size
    runs = {run.checkpoint: run for run in results.runs if run.dataset == split}
    rows = runs["base"].predictions[:SUBSET]
    outputs = models.generate([_phantom(row["id"], size) for row in rows], max_new_tokens=256)
    for column, checkpoint in enumerate(models.checkpoints):
        stored = runs[checkpoint].predictions[:SUBSET]
        assert [out[column] for out in outputs] == [row["output"] for row in stored], checkpoint
        parsed = [parse_completion(out[column]) for out in outputs]
        predicted = [list(p.labels) if p.parseable else None for p in parsed]
        truth = [row["truth"] for row in stored]
        assert predicted == [row["predicted"] for row in stored]
        assert score(truth, predicted, runs[checkpoint].label_set)["n"] == SUBSET
