"""Score every checkpoint of a model set on evaluation sets: batched generation (`ModelSet.complete_batch`), the
one parser, `chexreason.metrics`, bootstrap intervals, and paired differences between consecutive checkpoints
(SFT − base, GRPO − SFT), written in results schema v2 (`chexreason.results`): the summary with the truncation
rate, the data's and the weights' fingerprints, and one record per image and checkpoint, appended as each pass
finishes."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from datasets import Dataset

from chexreason.fingerprints import DataFingerprint, SplitData, model_set_fingerprints, split_fingerprint
from chexreason.metrics import bootstrap_macro_f1, bootstrap_macro_f1_difference, score
from chexreason.modeling import GenerationSettings, ModelSet
from chexreason.parsing import parse_completion
from chexreason.records import dataset_relative_source
from chexreason.results import (
    Bootstrap,
    Comparison,
    EvalResults,
    EvalRun,
    Generation,
    Record,
    RecordWriter,
    records_path,
    save_results,
)

logger = logging.getLogger(__name__)
EVAL_SETTINGS = GenerationSettings()  # greedy, each checkpoint within the budget its model set records
EVAL_BATCH_SIZE = 64  # images per generate call: on the tiny set the same outputs as 16, 17% faster
CONFIDENCE = 0.95  # of every bootstrap interval (chexreason.metrics' default)


class SourceError(ValueError):
    """An evaluation image that records could only name by a local path outside its dataset's image folder."""


def image_sources(dataset: Dataset, image_roots: Mapping[str, str | Path | None] | None = None) -> list[str]:
    """Each row's image as the records name it: a phantom's id, or a real image's path relative to the image
    folder of its `dataset` (``image_roots``, e.g. ``{"chexpert": "/data/chexpert"}``). Raises `SourceError`,
    before any generation, for a row whose image would be named by an absolute path or one outside its folder."""
    ids = list(dataset["id"])
    kinds = list(dataset["dataset"]) if "dataset" in dataset.column_names else [None] * len(ids)
    roots = {kind: os.path.abspath(root) for kind, root in (image_roots or {}).items() if root}
    sources = []
    for image_id, kind in zip(ids, kinds, strict=True):
        source = image_id
        if kind in roots and not str(kind).startswith("phantom"):
            source = Path(os.path.relpath(os.path.abspath(image_id), roots[kind])).as_posix()
        try:
            sources.append(dataset_relative_source(source))
        except ValueError as err:
            folder = roots.get(kind)
            hint = f"it is not inside the {kind} image folder {folder}" if folder else "name its image folder"
            raise SourceError(f"image {image_id} ({kind}): {err}; {hint}") from None
    return sources


def evaluate(
    model_set: ModelSet,
    datasets: Mapping[str, Dataset],
    data_fingerprint: str | None = None,
    settings: GenerationSettings = EVAL_SETTINGS,
    batch_size: int = EVAL_BATCH_SIZE,
    n_resamples: int = 2000,
    seed: int = 0,
    records: RecordWriter | None = None,
    image_roots: Mapping[str, str | Path | None] | None = None,
    sweep: tuple[str, Sequence[str]] | None = None,
) -> EvalResults:
    """Every checkpoint on every dataset (rows need `image`, `ground_truth`, `label_set`, `id`; `dataset` for
    real images, see `image_sources`), each with its own prompt; or, with ``sweep=(checkpoint, prompt keys)``,
    one checkpoint under each prompt (the paper's Table 1), without comparisons. Records go to `records`
    (image by image, the checkpoints of an image together) as each pass finishes."""
    # Each pass is (checkpoints, prompt override): one batched generation serves the whole pass.
    passes = [(list(model_set.checkpoints), None)] if sweep is None else [([sweep[0]], key) for key in sweep[1]]
    used = list(dict.fromkeys(name for checkpoints, _ in passes for name in checkpoints))
    # Up front, before any generation: what is scored, and how each image will be named.
    weights = model_set_fingerprints(model_set.spec.checkpoint(name) for name in used)
    all_sources = {name: image_sources(dataset, image_roots) for name, dataset in datasets.items()}
    runs, comparisons, splits = [], [], {}
    for name, dataset in datasets.items():
        label_set = dataset[0]["label_set"]
        truth, sources = list(dataset["ground_truth"]), all_sources[name]
        kinds = sorted(set(dataset["dataset"])) if "dataset" in dataset.column_names else []
        splits[name] = SplitData(n=len(dataset), label_set=label_set, fingerprint=split_fingerprint(sources, truth),
                                 images=kinds[0] if len(kinds) == 1 else None)  # fmt: skip
        for checkpoints, prompt_key in passes:
            start = time.perf_counter()
            completions = model_set.complete_batch(
                (image.convert("RGB") for image in dataset["image"]),
                checkpoint_names=checkpoints,
                prompt=prompt_key,
                batch_size=batch_size,
                total=len(dataset),
                settings=settings,
            )
            seconds = time.perf_counter() - start
            # One batched call serves every checkpoint of a pass: the time is that call's, shared.
            timings = {"seconds": round(seconds, 2), "images_per_second": round(len(dataset) / max(seconds, 1e-9), 2)}
            asked = {checkpoint: model_set.prompt_for(checkpoint, prompt_key) for checkpoint in checkpoints}
            budgets = {checkpoint: model_set.budget_of(checkpoint, settings) for checkpoint in checkpoints}
            prompts = {checkpoint: prompt.key for checkpoint, prompt in asked.items()}
            predictions = {}
            for column, checkpoint in enumerate(checkpoints):
                parsed = [parse_completion(row[column].text, asked[checkpoint].protocol) for row in completions]
                predicted = [list(p.labels) if p.parseable else None for p in parsed]
                predictions[checkpoint] = predicted
                runs.append(
                    EvalRun(
                        checkpoint=checkpoint,
                        dataset=name,
                        label_set=label_set,
                        prompt=prompts[checkpoint],
                        metrics=score(truth, predicted, label_set),
                        truncation_rate=sum(row[column].truncated for row in completions) / len(completions),
                        max_new_tokens=budgets[checkpoint],
                        macro_f1_ci=bootstrap_macro_f1(
                            truth, predicted, label_set, n_resamples=n_resamples, confidence=CONFIDENCE, seed=seed
                        ),
                        timings=timings,
                    )
                )
                run = runs[-1]
                logger.info("%s (%s) on %s: macro-F1 %.3f, fail rate %.3f, truncated %.3f", checkpoint, run.prompt,
                            name, run.metrics["macro_f1"], run.metrics["fail_rate"], run.truncation_rate)  # fmt: skip
            if records is not None:
                records.write(_records(name, prompts, sources, truth, completions, predictions))
            if sweep is None:
                for baseline, candidate in itertools.pairwise(checkpoints):
                    difference = bootstrap_macro_f1_difference(
                        truth, predictions[baseline], predictions[candidate], label_set, n_resamples, CONFIDENCE, seed
                    )
                    comparisons.append(
                        Comparison(
                            dataset=name,
                            label_set=label_set,
                            baseline=baseline,
                            candidate=candidate,
                            macro_f1_difference=difference,
                        )
                    )
    sampling = settings.do_sample
    used_budgets = {run.max_new_tokens for run in runs}
    generation = Generation(
        max_new_tokens=used_budgets.pop() if len(used_budgets) == 1 else None,
        decoding=settings.decoding,
        temperature=settings.temperature if sampling else None,
        top_p=settings.top_p if sampling else None,
        seed=settings.seed if sampling else None,
        batch_size=batch_size,
    )
    return EvalResults(
        model_set=model_set.spec.name,
        generation=generation,
        bootstrap=Bootstrap(n_resamples=n_resamples, seed=seed, confidence=CONFIDENCE),
        data=DataFingerprint(manifest=data_fingerprint, splits=splits),
        checkpoints=weights,
        runs=runs,
        comparisons=comparisons,
    )


def _records(dataset, prompts, sources, truth, completions, predictions) -> Iterator[Record]:
    """A pass's records, image by image, the checkpoints of an image together (in `prompts`' order)."""
    for i, row in enumerate(completions):
        for (checkpoint, prompt), answer in zip(prompts.items(), row, strict=True):
            predicted = predictions[checkpoint][i]
            yield Record(dataset=dataset, checkpoint=checkpoint, prompt=prompt, index=i, source=sources[i],
                         truth=truth[i], output=answer.text, predicted=predicted, parseable=predicted is not None,
                         truncated=answer.truncated, n_tokens=answer.n_tokens)  # fmt: skip


def write_evaluation(
    out: str | Path, model_set: ModelSet, datasets: Mapping[str, Dataset], keep_records: bool = True, **options
) -> EvalResults:
    """`evaluate` (with `options`), writing its summary to `out` and, unless ``keep_records=False``, its records
    beside it (``eval.json`` → ``eval.records.jsonl``). Records are appended to a pending file as passes finish
    and installed with the summary, so a run that fails leaves the previous results in place."""
    out = Path(out)
    if not keep_records:
        results = evaluate(model_set, datasets, **options)
        save_results(results, out)
        return results
    target = records_path(out)
    with RecordWriter(target.with_name(f".{target.name}.partial")) as writer:
        results = evaluate(model_set, datasets, records=writer, **options)
    save_results(results, out, records=writer.path)
    return results
