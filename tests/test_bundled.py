"""The bundled tiny checkpoints load, and re-evaluating them reproduces their bundled results."""

from pathlib import Path

import pytest

from chexreason.data.config import read_data_config
from chexreason.data.phantom import generate
from chexreason.fingerprints import model_set_fingerprints, sha256_file
from chexreason.metrics import score
from chexreason.modeling import GenerationSettings, load_model_set, read_model_set
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
    # The records stream image by image, the checkpoints of an image together: the first SUBSET images.
    stored = {name: [] for name in models.checkpoints}
    for record in results.iter_records(dataset=split):
        if record.index >= SUBSET:
            break
        stored[record.checkpoint].append(record)
    images = [_phantom(record.source, size) for record in stored["base"]]
    outputs = models.complete_batch(images, settings=GenerationSettings(results.generation.max_new_tokens))
    for column, checkpoint in enumerate(models.checkpoints):
        rows = stored[checkpoint]
        assert [out[column].text for out in outputs] == [row.output for row in rows], checkpoint
        assert [out[column].truncated for out in outputs] == [row.truncated for row in rows], checkpoint
        parsed = [parse_completion(out[column].text) for out in outputs]
        predicted = [list(p.labels) if p.parseable else None for p in parsed]
        assert predicted == [row.predicted for row in rows]
        assert score([row.truth for row in rows], predicted, runs[checkpoint].label_set)["n"] == SUBSET


def test_bundled_results_fingerprint_the_bundled_weights():
    # What the results say they scored is what is in the folder (the app can check this at start).
    results = load_results(BUNDLED / "eval.json")
    spec = read_model_set(BUNDLED / "model_set.yaml")
    recorded = {name: weights.model_dump() for name, weights in results.checkpoints.items()}
    assert recorded == model_set_fingerprints(spec.checkpoints)
    assert results.records.sha256 == sha256_file(results.records_file)  # the records are the summary's own
