"""The tiny recipe's base stage: turn a random-initialised tiny VLM into a stand-in for a pretrained one.

MedGemma-4B starts SFT already able to see chest X-rays (its vision encoder was pretrained on medical
images) and to write text, but was never trained on the paper's task in its format. A random-initialised
model is neither, and LoRA SFT on it would mean nothing. So before the paper's stages, the tiny recipe
runs two short full-parameter steps on phantoms *disjoint from every SFT, RL and test image*:

1. **Vision warm-up** — the vision tower learns to see the findings, through a throw-away linear
   14-way head on its mean-pooled features (binary cross-entropy), standing in for medical pretraining.
2. **Language stage** — the whole model learns to describe phantoms in plain prose (lay wording, no
   label names, no tags), plus to write ``<think>…</think><solution>…</solution>`` answers to the
   recipe's prompt *about other images than the one shown*: it knows the format loosely and the label
   vocabulary, but was never taught to read the labels off the image in that format.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from chexreason.data.phantom import PhantomSample, generate_parallel
from chexreason.data.splits import positives
from chexreason.labels import CHEXPERT_LABELS
from chexreason.prompts import AnswerFormat
from chexreason.teachers import TeacherCase, TemplateTeacher

logger = logging.getLogger(__name__)

# Lay descriptions: what a non-radiologist caption would say. Deliberately not the label names.
LAY_PHRASES = {
    "No Finding": "Nothing looks abnormal.",
    "Enlarged Cardiomediastinum": "The middle of the chest looks wide.",
    "Cardiomegaly": "The heart looks big.",
    "Lung Opacity": "Part of a lung looks hazy.",
    "Lung Lesion": "There is a round spot in a lung.",
    "Edema": "Both lungs look hazy around the middle, with fine lines at the bottom.",
    "Consolidation": "One area of lung looks solid white.",
    "Pneumonia": "There are blotchy patches low in one lung.",
    "Atelectasis": "A lung bottom looks squashed, with a white band.",
    "Pneumothorax": "There is a dark rim with no lung lines along the edge of a lung.",
    "Pleural Effusion": "The bottom corner of the chest looks filled in.",
    "Pleural Other": "The lining along the chest wall looks thick.",
    "Fracture": "A rib looks broken.",
    "Support Devices": "There are tubes or wires.",
}
CAPTION_PROMPT = "Describe this chest X-ray in plain words."


def base_corpus(n: int, seed: int, size: int) -> list[PhantomSample]:
    """Site-a phantoms for the base stage, from a seed no data build uses (data seeds are small integers); drawn
    on every core (~20 s of the recipe on one)."""
    return generate_parallel("a", n, seed=1_000_003 + seed, size=size)


def lay_caption(sample: PhantomSample) -> str:
    """A plain-prose description of a phantom: its view and each drawn finding in lay words."""
    found = positives(sample.chexpert_labels()) or ("No Finding",)
    return " ".join(
        [f"A {'front-to-back' if sample.params['view'] == 'AP' else 'back-to-front'} chest picture."]
        + [LAY_PHRASES[label] for label in found]
    )


def caption_conversations(samples: Sequence[PhantomSample]) -> list[dict]:
    """Image → lay caption, as conversational SFT rows."""
    return [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]},
                {"role": "assistant", "content": [{"type": "text", "text": lay_caption(s)}]},
            ],
            "images": [s.image],
        }
        for s in samples
    ]


def format_conversations(samples: Sequence[PhantomSample], answer_format: AnswerFormat, seed: int) -> list[dict]:
    """The recipe's prompt answered in its format, but about another image than the one shown."""
    rng = random.Random(seed)
    others = list(samples)
    rng.shuffle(others)
    cases = [
        TeacherCase(o.id, positives(o.chexpert_labels()) or ("No Finding",), view=o.params["view"], params=o.params)
        for o in others
    ]
    reasonings = TemplateTeacher().write(cases, answer_format)
    return [
        {
            "messages": [
                *answer_format.prompt.messages(),
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": answer_format.render(case.labels, reasoning)}],
                },
            ],
            "images": [shown.image],
        }
        for shown, case, reasoning in zip(samples, cases, reasonings, strict=True)
    ]


class _Probe(nn.Module):
    """Vision tower + mean pooling + a linear 14-way head (the head is discarded after the warm-up)."""

    def __init__(self, vision_tower: nn.Module, hidden: int) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.head = nn.Linear(hidden, len(CHEXPERT_LABELS))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        return self.head(features.mean(dim=1))


def warm_up_vision(
    model: nn.Module,
    processor,
    samples: Sequence[PhantomSample],
    epochs: int = 2,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[dict]:
    """Train the model's vision tower in place to see the findings; returns the loss log."""
    torch.manual_seed(seed)
    tower = model.model.vision_tower
    probe = _Probe(tower, model.config.vision_config.hidden_size)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=learning_rate, weight_decay=0.01)
    images = [s.image.convert("RGB") for s in samples]
    targets = torch.tensor([[float(s.chexpert_labels()[label] == 1.0) for label in CHEXPERT_LABELS] for s in samples])
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    steps = epochs * math.ceil(len(samples) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    loss_fn = nn.BCEWithLogitsLoss()
    log, start = [], time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    probe.train()
    with tqdm(total=steps, desc="vision warm-up") as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(samples), generator=generator)
            for i in range(0, len(samples), batch_size):
                batch = order[i : i + batch_size]
                loss = loss_fn(probe(pixels[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                log.append({"step": len(log) + 1, "epoch": epoch, "loss": round(loss.item(), 4)})
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    logger.info(
        "vision warm-up: %d steps in %.0f s, final loss %.3f", steps, time.perf_counter() - start, log[-1]["loss"]
    )
    return log
