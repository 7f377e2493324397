"""Score every checkpoint of a model set on evaluation sets: batched greedy generation, the one parser,
`chexreason.metrics`, bootstrap intervals, and paired differences between consecutive checkpoints
(SFT − base, GRPO − SFT), written in the results schema of `chexreason.results`."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence

from datasets import Dataset

from chexreason.metrics import bootstrap_macro_f1, bootstrap_macro_f1_difference, score
from chexreason.modeling import ModelSet
from chexreason.parsing import parse_completion
from chexreason.results import Comparison, EvalResults, EvalRun, fingerprint

logger = logging.getLogger(__name__)


def evaluate(
    model_set: ModelSet,
    datasets: Mapping[str, Dataset],
    data_fingerprint: str = "",
    batch_size: int = 64,
    max_new_tokens: int = 256,
    n_resamples: int = 2000,
    seed: int = 0,
    keep_predictions: bool = True,
    sweep: tuple[str, Sequence[str]] | None = None,
) -> EvalResults:
    """Every checkpoint on every dataset (rows need `image`, `ground_truth`, `label_set`, `id`), each with its
    own prompt; or, with ``sweep=(checkpoint, prompt keys)``, one checkpoint under each prompt (the paper's
    Table 1), without comparisons."""
    config = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "decoding": "greedy", "seed": seed}
    # Each pass is (checkpoints, prompt override): one batched generation serves the whole pass.
    passes = [(list(model_set.checkpoints), None)] if sweep is None else [([sweep[0]], key) for key in sweep[1]]
    runs, comparisons = [], []
    for name, dataset in datasets.items():
        label_set = dataset[0]["label_set"]
        truth = dataset["ground_truth"]
        for checkpoints, prompt_key in passes:
            start = time.perf_counter()
            outputs = model_set.generate_batch(
                (image.convert("RGB") for image in dataset["image"]),
                checkpoint_names=checkpoints,
                prompt=prompt_key,
                batch_size=batch_size,
                total=len(dataset),
                max_new_tokens=max_new_tokens,
            )
            seconds = time.perf_counter() - start
            predictions = {}
            for column, checkpoint in enumerate(checkpoints):
                prompt = model_set.prompt_for(checkpoint, prompt_key)
                parsed = [parse_completion(row[column], prompt.protocol) for row in outputs]
                predicted = [list(p.labels) if p.parseable else None for p in parsed]
                predictions[checkpoint] = predicted
                runs.append(
                    EvalRun(
                        checkpoint=checkpoint,
                        dataset=name,
                        label_set=label_set,
                        prompt=prompt.key,
                        metrics=score(truth, predicted, label_set),
                        config=config,
                        fingerprints={
                            "config": fingerprint(config),
                            "data": fingerprint([data_fingerprint, name, len(dataset)]),
                        },
                        # One batched call serves every checkpoint of a pass: the time is that call's, shared.
                        timings={"seconds": round(seconds, 2), "images_per_second": round(len(dataset) / seconds, 2)},
                        macro_f1_ci=bootstrap_macro_f1(
                            truth, predicted, label_set, n_resamples=n_resamples, seed=seed
                        ),
                        predictions=[
                            {"id": i, "truth": t, "predicted": p, "output": row[column]}
                            for i, t, p, row in zip(dataset["id"], truth, predicted, outputs, strict=True)
                        ]
                        if keep_predictions
                        else None,
                    )
                )
                logger.info("%s (%s) on %s: macro-F1 %.3f", checkpoint, prompt.key, name, runs[-1].metrics["macro_f1"])
            if sweep is None:
                for baseline, candidate in itertools.pairwise(checkpoints):
                    difference = bootstrap_macro_f1_difference(
                        truth, predictions[baseline], predictions[candidate], label_set, n_resamples, seed=seed
                    )
                    comparisons.append(Comparison(name, label_set, baseline, candidate, difference))
    return EvalResults(model_set.spec.name, runs, comparisons)
