"""Build the SFT, RL and evaluation sets of a recipe as `datasets` on disk (what `python -m train.data` runs).

Output, under ``config.output_dir``:
- ``datasets/`` — a `DatasetDict` (load with `load_built`): ``sft_train``, ``sft_validation``, ``rl`` and one
  ``test_<name>`` per evaluation set (phantom: ``test_phantom_a``, ``test_phantom_b``; real: ``test_chexpert``,
  ``test_nih``); real builds given ``chexpert_valid_csv`` add ``valid_chexpert`` (CheXpert's valid.csv).
  Columns: ``id``, ``image``, ``ground_truth`` (CheXpert labels), ``label_set`` (the evaluation label set of the
  row's dataset), ``dataset``, ``view``, ``patient_id``, ``source_labels`` and ``params`` (JSON text); the SFT sets
  add ``reasoning`` and ``answer`` (the target in the answer format).
- ``manifest.json`` — the config and its fingerprint, counts per split and label, every dropped example by
  reason, the teacher's statistics. A second run with the same config finds it and reuses the datasets.

What each split may be used for follows from its name, by one rule (`split_role`): ``test_*`` splits are for
reporting only; selection — a prompt sweep (`python -m train.evaluate --prompts`), GRPO's best checkpoint —
runs on the validation splits, ``sft_validation`` and ``valid_*`` (`selection_splits`), never on a test split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_from_disk
from tqdm.auto import tqdm

from chexreason import atomic
from chexreason.data.phantom import generate
from chexreason.data.readers import DatasetError, read_chexpert, read_mimic, read_nih
from chexreason.data.splits import (
    Example,
    SplitReport,
    example_from_phantom,
    example_from_record,
    keep_trainable,
    patient_disjoint_split,
)
from chexreason.faults import fault_point
from chexreason.processes import die_with_parent
from chexreason.prompts import get_answer_format
from chexreason.results import fingerprint
from chexreason.teachers import Teacher, TeacherCase, TemplateTeacher

if TYPE_CHECKING:
    from chexreason.data.config import DataConfig

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATASETS = "datasets"
CREDENTIALED = {"mimic-cxr", "chexpert"}  # data use agreements forbid third-party online services

_FEATURES = {
    "id": Value("string"),
    "image": Image(),
    "ground_truth": List(Value("string")),
    "label_set": Value("string"),
    "dataset": Value("string"),
    "view": Value("string"),
    "patient_id": Value("string"),
    "source_labels": Value("string"),
    "params": Value("string"),
}
_SFT_FEATURES = {**_FEATURES, "reasoning": Value("string"), "answer": Value("string")}

# Split roles, by name: the one rule (`split_role`) that `train.evaluate` applies.
TEST_PREFIX = "test_"  # reporting only: test_chexpert, test_nih, test_phantom_a, test_phantom_b
VALIDATION_PREFIX = "valid_"  # held-out evaluation sets for selection: valid_chexpert (CheXpert's valid.csv)
SFT_VALIDATION = "sft_validation"  # the held-out tenth of the SFT examples: SFT's early stopping, GRPO's best step


def split_role(name: str) -> str:
    """What a split of a build may be used for: ``"test"`` (reporting only), ``"validation"`` (selection may use
    it) or ``"training"``.

    >>> [split_role(name) for name in ("test_nih", "valid_chexpert", "sft_validation", "rl")]
    ['test', 'validation', 'validation', 'training']
    """
    if name.startswith(TEST_PREFIX):
        return "test"
    if name == SFT_VALIDATION or name.startswith(VALIDATION_PREFIX):
        return "validation"
    return "training"


def report_splits(names: Iterable[str]) -> list[str]:
    """The test splits among `names`, in order: what a plain evaluation scores by default."""
    return [name for name in names if split_role(name) == "test"]


def selection_splits(names: Iterable[str]) -> list[str]:
    """The validation splits among `names` that a selection runs on by default: the held-out evaluation sets
    (``valid_*``; real data: valid_chexpert, as the paper's Tables 1-4) where the build has them, else
    sft_validation (phantom builds, and real builds without chexpert_valid_csv)."""
    validation = [name for name in names if split_role(name) == "validation"]
    return [name for name in validation if name != SFT_VALIDATION] or validation


def load_built(output_dir: str | Path) -> DatasetDict:
    """The datasets a build wrote."""
    path = Path(output_dir) / DATASETS
    if not path.exists():
        raise FileNotFoundError(f"no built datasets in {output_dir}; run `python -m train.data --config <recipe>`")
    return load_from_disk(str(path))


def head(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` rows of a built dataset (all of them when `limit` is None or larger)."""
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


# Fields added after builds were first fingerprinted: left out of the key while unset, so the builds (and results,
# such as checkpoints/tiny/eval.json) of configs that do not use them keep their fingerprint.
_LATER_FIELDS = frozenset({"chexpert_valid_csv"})


def _unset_later_field(name: str, value: object) -> bool:
    return name in _LATER_FIELDS and value is None


def build_datasets(config: DataConfig) -> dict:
    """Build (or reuse) the datasets of `config`; returns the manifest."""
    out = Path(config.output_dir)
    config_dict = asdict(config)
    key = fingerprint(
        {
            k: v
            for k, v in config_dict.items()
            if k not in ("output_dir", "workers", "paper_recipe") and not _unset_later_field(k, v)
        }
    )
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path) if (out / DATASETS).exists() else None
    if manifest is not None and manifest.get("fingerprint") == key:
        logger.info("reusing the datasets in %s (same config, fingerprint %s)", out, key)
        manifest["reused"] = True
        return manifest
    if manifest is not None:
        logger.info("config changed since the last build in %s: rebuilding", out)

    missing = config.missing_real_paths()
    if missing:
        raise DatasetError(
            "data config: source 'real' needs "
            + ", ".join(missing)
            + " (set them in the data recipe, or override them where the config is parsed)"
        )
    absent = config.absent_optional_files()
    if absent:  # before any dataset is read
        raise FileNotFoundError(f"data config: {'; '.join(absent)} (fix the path, or leave it unset)")
    start = time.perf_counter()
    report = SplitReport()
    if config.source == "phantom":
        splits, label_sets = _phantom_splits(config, report)
    else:
        splits, label_sets = _real_splits(config, report)
    teacher_stats, traces = _add_traces(splits, config, report)
    for name, examples in splits.items():
        report.add_split(name, examples)
    logger.info("%s", report)

    staging = out / f"{DATASETS}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    built = {name: to_dataset(name, examples, label_sets[name], traces.get(name)) for name, examples in splits.items()}
    DatasetDict(built).save_to_disk(str(staging))
    # The manifest says which config the datasets are of: it goes first and comes back last, so a kill in between
    # leaves datasets without a manifest (rebuilt by the next run), never another config's manifest beside them.
    manifest_path.unlink(missing_ok=True)
    shutil.rmtree(out / DATASETS, ignore_errors=True)
    staging.rename(out / DATASETS)  # a build interrupted before this line leaves no half-written datasets/
    fault_point("manifest-write")

    manifest = {
        "config": config_dict,
        "fingerprint": key,
        "splits": {name: {"size": report.sizes[name], "label_set": label_sets[name]} for name in splits},
        "label_counts": report.label_counts,
        "dropped": dict(report.dropped),
        "teacher": teacher_stats,
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic.write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    logger.info("built %s in %.1f s", out, manifest["seconds"])
    return manifest


def _read_manifest(path: Path) -> dict | None:
    """A build's manifest, or None when there is none to trust (absent, or unreadable: the build is redone)."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("%s is unreadable (%s): rebuilding", path, error)
        return None
    return manifest if isinstance(manifest, dict) else None


# ------------------------------------------------------------------------------------------- phantoms


def _generate_chunk(args: tuple[str, int, int, int, int, str]) -> list[Example | str]:
    site, n, seed, size, start, policy = args
    return [example_from_phantom(sample, policy) for sample in generate(site, n, seed=seed, size=size, start=start)]


def _phantom_stream(site: str, needed: int, config: DataConfig, report: SplitReport, trainable: bool) -> list[Example]:
    """`needed` usable examples of a site, drawing phantoms in index order (in parallel) until there are enough."""
    kept: list[Example] = []
    start, chunk = 0, 64
    pool = ProcessPoolExecutor(config.workers, initializer=die_with_parent, initargs=(os.getpid(),))
    with pool, tqdm(total=needed, desc=f"phantom site {site}") as bar:
        while len(kept) < needed:
            # Over-draw by the share dropped so far (films with only uncertain labels), in chunks for the pool.
            batch = max(chunk, math.ceil((needed - len(kept)) * 1.1))
            jobs = [
                (site, min(chunk, batch - i), config.seed, config.image_size, start + i, config.uncertainty_policy)
                for i in range(0, batch, chunk)
            ]
            for items in pool.map(_generate_chunk, jobs):
                fault_point("data-generating")
                fresh = (
                    keep_trainable(items, report, config.frontal_only)
                    if trainable
                    else [x for x in items if not isinstance(x, str)]
                )
                take = fresh[: needed - len(kept)]
                kept.extend(take)
                bar.update(len(take))
            start += batch
    return kept


def _phantom_splits(config: DataConfig, report: SplitReport) -> tuple[dict[str, list[Example]], dict[str, str]]:
    n_val = config.sft_validation_samples
    train_sizes = {"sft_train": config.sft_samples - n_val, "sft_validation": n_val, "rl": config.rl_samples}
    # Site a feeds training and in-distribution testing; each phantom is its own patient, so dealing the
    # stream out in order keeps the sets disjoint.
    stream = _phantom_stream("a", sum(train_sizes.values()) + config.test_samples_per_site, config, report, True)
    splits, offset = {}, 0
    for name, size in {**train_sizes, "test_phantom_a": config.test_samples_per_site}.items():
        splits[name], offset = stream[offset : offset + size], offset + size
    # Site b is evaluation only; like NIH images whose findings have no CheXpert label, its films may have
    # no positive label in the evaluation set — they stay (predicting none of its labels is then right).
    splits["test_phantom_b"] = _phantom_stream("b", config.test_samples_per_site, config, report, False)
    label_sets = {name: "chexpert14" for name in splits}
    label_sets["test_phantom_b"] = config.nih_label_set
    return splits, label_sets


# ---------------------------------------------------------------------------------------------- real


def _real_splits(config: DataConfig, report: SplitReport) -> tuple[dict[str, list[Example]], dict[str, str]]:
    mimic = read_mimic(config.mimic_root, labeler=config.mimic_labeler)
    # Training comes from MIMIC's official train split (validate/test splits are left alone).
    records = [r for r in mimic.records if r.split in (None, "train")]
    train = keep_trainable(
        (example_from_record(r, config.uncertainty_policy) for r in records), report, config.frontal_only
    )
    n_val = config.sft_validation_samples
    sizes = {"sft_train": config.sft_samples - n_val, "sft_validation": n_val, "rl": config.rl_samples}
    splits = patient_disjoint_split(train, sizes, config.seed)

    evaluation = {}
    if config.chexpert_valid_csv:  # CheXpert validation: what selection runs on (the paper's Tables 1-4)
        evaluation["valid_chexpert"] = read_chexpert(config.chexpert_valid_csv, config.chexpert_root)
    evaluation["test_chexpert"] = read_chexpert(config.chexpert_test_csv, config.chexpert_root)
    evaluation["test_nih"] = read_nih(config.nih_csv, config.nih_images, config.nih_split_list)
    for name, result in evaluation.items():  # the same uncertainty policy and view filter for each
        examples = []
        for record in result:
            item = example_from_record(record, config.uncertainty_policy)
            if isinstance(item, str) or (config.frontal_only and not record.is_frontal):
                report.dropped[item if isinstance(item, str) else f"{name}: not a frontal view"] += 1
            else:
                examples.append(item)
        splits[name] = examples
    _refuse_shared_patients(splits, "valid_chexpert", "test_chexpert")
    label_sets = {name: "chexpert14" for name in splits}
    label_sets["test_nih"] = config.nih_label_set
    return splits, label_sets


def _refuse_shared_patients(splits: dict[str, list[Example]], validation: str, test: str) -> None:
    """A validation split sharing a patient with a test split would leak the test set into selection."""
    if validation not in splits:
        return
    shared = {e.patient_id for e in splits[validation]} & {e.patient_id for e in splits[test]}
    if shared:
        raise DatasetError(
            f"{validation} and {test} share {len(shared)} patient(s), e.g. {min(shared)}: is chexpert_valid_csv "
            "CheXpert's valid.csv?"
        )


# -------------------------------------------------------------------------------------------- traces


def make_teacher(config: DataConfig) -> Teacher:
    if config.teacher == "template":
        return TemplateTeacher()
    from chexreason.teachers.api import ApiTeacher, ApiTeacherConfig  # only API builds need the openai client

    return ApiTeacher(
        ApiTeacherConfig(
            base_url=config.teacher_base_url,
            model=config.teacher_model,
            api_key_env=config.teacher_api_key_env,
            cache_path=str(Path(config.output_dir) / "teacher_cache.jsonl"),
            max_concurrency=config.teacher_max_concurrency,
            allow_credentialed_remote=config.teacher_allow_credentialed_remote,
        )
    )


def _case(example: Example, with_image: bool) -> TeacherCase:
    image = example.image
    if image is None and with_image and example.image_path:
        from chexreason.images import load_image

        image = load_image(example.image_path)
    return TeacherCase(
        example.id, example.truth, image, example.view, example.params, credentialed=example.dataset in CREDENTIALED
    )


def _add_traces(splits: dict[str, list[Example]], config: DataConfig, report: SplitReport) -> tuple[dict, dict]:
    """The teacher's reasoning and the answer target for each SFT example, as (stats, {split: [(reasoning,
    answer)]}); SFT examples whose trace failed (API teacher) are removed from `splits` and counted."""
    fmt, teacher = get_answer_format(config.answer_format), make_teacher(config)
    looks = not isinstance(teacher, TemplateTeacher)  # the template teacher never opens an image
    stats: dict = {"teacher": teacher.name, "answer_format": fmt.key}
    traces = {}
    for name in ("sft_train", "sft_validation"):
        examples = splits[name]
        if hasattr(teacher, "write_all"):  # the API teacher reports failures and mismatches instead of raising
            report_ = teacher.write_all([_case(e, looks) for e in examples], fmt)
            stats[name] = {
                k: getattr(report_, k) for k in ("requested", "cached", "generated", "mismatched", "failed")
            }
            reasonings = [r.reasoning for r in report_.results]
            keep = [
                r.reasoning is not None and (r.labels_match or not config.drop_teacher_mismatches)
                for r in report_.results
            ]
            report.dropped["teacher trace failed or missed the labels"] += keep.count(False)
        else:
            reasonings, keep = teacher.write([_case(e, looks) for e in examples], fmt), [True] * len(examples)
        splits[name] = [e for e, kept in zip(examples, keep, strict=True) if kept]
        traces[name] = [
            (reasoning, fmt.render(e.truth, reasoning))
            for e, reasoning, kept in zip(examples, reasonings, keep, strict=True)
            if kept
        ]
    return stats, traces


# ------------------------------------------------------------------------------------------- writing


def _row(example: Example, label_set: str) -> dict:
    return {
        "id": example.id,
        "image": example.image if example.image is not None else {"path": example.image_path, "bytes": None},
        "ground_truth": list(example.truth),
        "label_set": label_set,
        "dataset": example.dataset,
        "view": example.view or "",
        "patient_id": example.patient_id,
        "source_labels": json.dumps(example.source_labels),
        "params": json.dumps(example.params) if example.params else "",
    }


def to_dataset(
    name: str, examples: Sequence[Example], label_set: str, traces: Sequence[tuple[str, str]] | None = None
) -> Dataset:
    """A split's rows as a dataset with the build's columns (and, for SFT sets, the traces' `reasoning`/`answer`)."""
    if not examples:
        raise DatasetError(f"the {name} split came out empty: check the sizes and the dropped counts in the log")
    rows = [_row(e, label_set) for e in examples]
    features = _FEATURES
    if traces is not None:  # SFT sets: the teacher's reasoning and the rendered target
        rows = [{**row, "reasoning": r, "answer": a} for row, (r, a) in zip(rows, traces, strict=True)]
        features = _SFT_FEATURES
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=Features(features))
