"""Batched evaluation vs one image at a time, on the same checkpoint and images (target: batched >= 4x).

    python -m benchmarks.eval_throughput --models checkpoints/tiny/model_set.yaml --checkpoint sft --images 64

Greedy generation of one checkpoint on the first N images of a built test split; prints images per second
for each mode and their ratio, and checks both modes wrote the same answers.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from chexreason.data.build import load_built
from chexreason.modeling import GenerationSettings, load_model_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--checkpoint", default="sft")
    parser.add_argument("--data", default="outputs/tiny/data", help="a data build's output_dir")
    parser.add_argument("--split", default="test_phantom_a")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    args = parser.parse_args()

    models = load_model_set(args.models)
    images = [im.convert("RGB") for im in load_built(args.data)[args.split].select(range(args.images))["image"]]
    names, settings = [args.checkpoint], GenerationSettings(max_new_tokens=args.max_new_tokens)
    models.generate(images[:2], names, settings=settings)  # warm-up: lazy imports and first-call allocations

    start = time.perf_counter()
    single = [models.generate([image], names, settings=settings)[0] for image in images]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = models.generate_batch(images, names, batch_size=args.batch_size, progress=False, settings=settings)
    batched_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(single, batched, strict=True))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"checkpoint {args.checkpoint}, {len(images)} images of {args.split}, max_new_tokens {args.max_new_tokens}")
    print(f"one at a time: {len(images) / single_s:6.2f} images/s ({single_s:.1f} s)")
    print(f"batched ({args.batch_size}): {len(images) / batched_s:6.2f} images/s ({batched_s:.1f} s)")
    print(f"speed-up: {single_s / batched_s:.1f}x; identical answers: {same}/{len(images)}")


if __name__ == "__main__":
    main()
