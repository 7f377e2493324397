"""Score every checkpoint of a model set on evaluation sets: batched generation (`ModelSet.complete_batch`), the
one parser, `chexreason.metrics`, bootstrap intervals, and paired differences between consecutive checkpoints
(SFT − base, GRPO − SFT), written in results schema v2 (`chexreason.results`): the summary with the truncation
rate, the data's and the weights' fingerprints, and one record per image and checkpoint.

Records are appended batch by batch to a pending file (`RecordLog`) beside a fingerprint of what is being
evaluated (weights, splits, decoding, batch size, prompts); a killed run, rerun with the same command, keeps the
records of every complete batch, generates only the rest, and writes the same results: at most one batch is lost.
The summary and its records are installed together only when every split is done, so a run that fails or is
killed leaves the previous results in place."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from datasets import Dataset
from pydantic import ValidationError
from tqdm.auto import tqdm

from chexreason import atomic
from chexreason.decoding import Completion
from chexreason.faults import fault_point
from chexreason.fingerprints import (
    DataFingerprint,
    SplitData,
    fingerprint,
    model_set_fingerprints,
    split_fingerprint,
)
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


PassKey = tuple[str, tuple[tuple[str, str], ...]]  # (split, ((checkpoint, prompt key), ...)): one batched pass


def evaluate(
    model_set: ModelSet,
    datasets: Mapping[str, Dataset],
    data_fingerprint: str | None = None,
    settings: GenerationSettings = EVAL_SETTINGS,
    batch_size: int = EVAL_BATCH_SIZE,
    n_resamples: int = 2000,
    seed: int = 0,
    records: RecordLog | None = None,
    image_roots: Mapping[str, str | Path | None] | None = None,
    sweep: tuple[str, Sequence[str]] | None = None,
) -> EvalResults:
    """Every checkpoint on every dataset (rows need `image`, `ground_truth`, `label_set`, `id`; `dataset` for
    real images, see `image_sources`), each with its own prompt; or, with ``sweep=(checkpoint, prompt keys)``,
    one checkpoint under each prompt (the paper's Table 1), without comparisons. Records go to `records`
    (image by image, the checkpoints of an image together) batch by batch; what a killed run left there for the
    same evaluation is kept, and only the rest is generated."""
    # Each pass is (checkpoints, prompt override): one batched generation serves the whole pass.
    passes = [(list(model_set.checkpoints), None)] if sweep is None else [([sweep[0]], key) for key in sweep[1]]
    used = list(dict.fromkeys(name for checkpoints, _ in passes for name in checkpoints))
    # Up front, before any generation: what is scored, and how each image will be named.
    weights = model_set_fingerprints(model_set.spec.checkpoint(name) for name in used)
    all_sources = {name: image_sources(dataset, image_roots) for name, dataset in datasets.items()}
    splits = {}
    for name, dataset in datasets.items():
        kinds = sorted(set(dataset["dataset"])) if "dataset" in dataset.column_names else []
        splits[name] = SplitData(n=len(dataset), label_set=dataset[0]["label_set"],
                                 fingerprint=split_fingerprint(all_sources[name], dataset["ground_truth"]),
                                 images=kinds[0] if len(kinds) == 1 else None)  # fmt: skip
    asked = {key: {c: model_set.prompt_for(c, key) for c in checkpoints} for checkpoints, key in passes}
    plan = [((name, tuple((c, p.key) for c, p in asked[key].items())), key) for name in datasets for _, key in passes]
    done = {}
    if records is not None:
        identity = {"model_set": model_set.spec.name, "weights": {c: w["digest"] for c, w in weights.items()},
                    "splits": {name: split.fingerprint for name, split in splits.items()},
                    "budgets": {c: model_set.budget_of(c, settings) for c in used},
                    "settings": asdict(settings)}  # fmt: skip
        done = records.open(identity, [(pass_key, splits[pass_key[0]].n) for pass_key, _ in plan], batch_size)
    runs, comparisons = [], []
    for (name, pairs), prompt_key in plan:
        dataset, label_set = datasets[name], splits[name].label_set
        truth, sources = list(dataset["ground_truth"]), all_sources[name]
        checkpoints = [checkpoint for checkpoint, _ in pairs]
        prompts = dict(pairs)
        protocols = {checkpoint: prompt.protocol for checkpoint, prompt in asked[prompt_key].items()}

        write = functools.partial(_write_batch, records, name, prompts, protocols, sources, truth)
        start = time.perf_counter()
        kept = done.get((name, pairs), [])
        completions = _complete(model_set, dataset, checkpoints, prompt_key, settings, batch_size, kept, write)
        seconds = time.perf_counter() - start
        # One batched call serves every checkpoint of a pass: the time is that call's, shared (this run's part).
        generated = max(len(dataset) - len(kept), 1)
        timings = {"seconds": round(seconds, 2), "images_per_second": round(generated / max(seconds, 1e-9), 2)}
        budgets = {checkpoint: model_set.budget_of(checkpoint, settings) for checkpoint in checkpoints}
        predictions = {}
        for column, checkpoint in enumerate(checkpoints):
            parsed = [parse_completion(row[column].text, protocols[checkpoint]) for row in completions]
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


def _complete(
    model_set, dataset, checkpoints, prompt_key, settings, batch_size, kept, write
) -> list[list[Completion]]:
    """A pass's completions: those `kept` from a killed run, then the rest, a batch at a time, each batch's records
    written (`write`) as soon as it is generated. The batches are those of an uninterrupted run."""
    rows = list(kept)
    with tqdm(total=len(dataset), initial=len(rows), unit="image", desc="generating") as bar:
        for start in range(len(rows), len(dataset), batch_size):
            part = dataset.select(range(start, min(start + batch_size, len(dataset))))
            completions = model_set.complete_batch([image.convert("RGB") for image in part["image"]],
                                                   checkpoint_names=checkpoints, prompt=prompt_key,
                                                   batch_size=batch_size, progress=False, settings=settings,
                                                   start=start)  # fmt: skip
            write(start, completions)
            rows += completions
            bar.update(len(completions))
            fault_point("evaluate-batch")
    return rows


def _write_batch(records: RecordLog | None, *batch) -> None:
    if records is not None:
        records.write(_records(*batch))


def _records(dataset, prompts, protocols, sources, truth, start, completions) -> Iterator[Record]:
    """A batch's records, image by image, the checkpoints of an image together (in `prompts`' order)."""
    for i, row in enumerate(completions, start):
        for (checkpoint, prompt), answer in zip(prompts.items(), row, strict=True):
            parsed = parse_completion(answer.text, protocols[checkpoint])
            predicted = list(parsed.labels) if parsed.parseable else None
            yield Record(dataset=dataset, checkpoint=checkpoint, prompt=prompt, index=i, source=sources[i],
                         truth=truth[i], output=answer.text, predicted=predicted, parseable=predicted is not None,
                         truncated=answer.truncated, n_tokens=answer.n_tokens)  # fmt: skip


class RecordLog:
    """The pending records file of an evaluation, appended to batch by batch, with ``<file>.plan`` beside it: the
    fingerprint of what is evaluated. `open` keeps what a killed run of the same evaluation wrote (the complete
    images of each pass, a cut-off last line dropped) and returns those completions; otherwise it starts empty."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.plan_path = self.path.with_name(self.path.name + ".plan")
        self._writer: RecordWriter | None = None

    def open(
        self, identity: dict, passes: Sequence[tuple[PassKey, int]], batch_size: int
    ) -> dict[PassKey, list[list[Completion]]]:
        """Start or resume: `identity` is what is evaluated, `passes` each pass with its number of images."""
        key = fingerprint({"identity": identity, "passes": [list(p) for p in passes], "batch_size": batch_size})
        kept: dict[PassKey, list[list[Completion]]] = {}
        if self.path.is_file() and self.plan_path.is_file() and self.plan_path.read_text().strip() == key:
            kept = self._resume(passes, batch_size)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            atomic.write_text(self.plan_path, key + "\n")
        self._writer = RecordWriter(self.path, fresh=False)
        return kept

    def _resume(self, passes: Sequence[tuple[PassKey, int]], batch_size: int) -> dict[PassKey, list[list[Completion]]]:
        found: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
        with self.path.open("rb") as lines:
            for line in lines:
                try:
                    record = Record.model_validate_json(line.decode("utf-8"))
                except (ValidationError, UnicodeDecodeError):  # the line a kill cut off, and nothing after it
                    break
                bucket = found[record.dataset, record.checkpoint, record.prompt]
                if record.index == len(bucket):
                    bucket.append(record)
        kept, lines_kept = {}, []
        for (name, pairs), n in passes:
            done = min(min(len(found[name, c, p]) for c, p in pairs), n)
            if done < n:  # whole batches only, so that the rest is batched as an uninterrupted run batches it
                done -= done % batch_size
            columns = [found[name, c, p][:done] for c, p in pairs]
            kept[name, pairs] = [[Completion(r.output, r.n_tokens or 0, bool(r.truncated)) for r in row]
                                 for row in zip(*columns, strict=True)]  # fmt: skip
            lines_kept += [record for row in zip(*columns, strict=True) for record in row]
        staged = self.path.with_name(self.path.name + ".kept")
        with RecordWriter(staged) as writer:  # exactly the kept records, in the order they were written
            writer.write(lines_kept)
        os.replace(staged, self.path)
        logger.info("resuming the evaluation in %s: %d records kept from the interrupted run", self.path,
                    len(lines_kept))  # fmt: skip
        return kept

    def write(self, records: Iterator[Record]) -> None:
        assert self._writer is not None, "RecordLog.open first"
        self._writer.write(records)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def discard(self) -> None:
        """Remove the pending file and its plan (the evaluation is installed, or its records are not kept)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self.plan_path.unlink(missing_ok=True)


def write_evaluation(
    out: str | Path, model_set: ModelSet, datasets: Mapping[str, Dataset], keep_records: bool = True, **options
) -> EvalResults:
    """`evaluate` (with `options`), writing its summary to `out` and, unless ``keep_records=False``, its records
    beside it (``eval.json`` → ``eval.records.jsonl``). Records are appended to a pending file batch by batch (a
    rerun after a kill continues from it, `RecordLog`) and installed with the summary, so a run that fails leaves
    the previous results in place."""
    out = Path(out)
    target = records_path(out)
    log = RecordLog(target.with_name(f".{target.name}.partial"))
    try:
        results = evaluate(model_set, datasets, records=log, **options)
    finally:
        log.close()
    fault_point("results-write")
    if keep_records:  # a link is installed; the pending file stays until the summary is in, for a rerun to reuse
        link = log.path.with_name(log.path.name + ".install")
        link.unlink(missing_ok=True)
        try:
            os.link(log.path, link)
        except OSError:  # a file system without hard links
            shutil.copy2(log.path, link)
        save_results(results, out, records=link)
    else:
        save_results(results, out)
    log.discard()
    return results
