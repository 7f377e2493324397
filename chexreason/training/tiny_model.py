"""Build the tiny random-initialised VLM that the tiny recipe trains: MedGemma's architecture, shrunk.

`Gemma3ForConditionalGeneration` (SigLIP vision tower → average pooling to `mm_tokens_per_image` soft
tokens → Gemma3 text decoder) with a byte-level BPE tokenizer trained here, offline, on the project's
own prompts and teacher traces, and a `Gemma3Processor`. Saved with `save_pretrained`, it loads with
`AutoModelForImageTextToText` / `AutoProcessor` like MedGemma-4B does, so every later stage runs the
same code at both scales.

Why these sizes (measured on this 2-core machine, one torch thread): at 112 px / 16 image tokens the
vision warm-up (`chexreason.training.pretrain`) reaches validation AUCs of 0.72-1.0 on every finding in 37 s,
where 224 px / 64 tokens reached 0.45-0.93 in 126 s; every finding stays visible at 112 px
(tests/test_phantom.py). A bigger language model learns no faster on 2 CPU cores: the budget goes to steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)
from trl.chat_template_utils import gemma3_chat_template

from chexreason.labels import CHEXPERT_LABELS, NIH_LABELS
from chexreason.prompts import ALL_PROMPTS, ANSWER_FORMATS, TAGS

logger = logging.getLogger(__name__)

# Gemma3's special tokens, spelled as the real tokenizer spells them, plus the reasoning protocol's tags.
BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN, BOI, EOI, IMAGE)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults: about 1.2 M parameters, 16 image tokens at 112 px."""

    image_size: int = 112
    patch_size: int = 14
    image_tokens: int = 16  # (112 / 14)² = 64 patches, average-pooled 2×2 → 4 × 4 = 16 soft tokens
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 512
    vocab_size: int = 3000
    max_positions: int = 2048

    def __post_init__(self) -> None:
        side = self.image_size // self.patch_size
        root = round(self.image_tokens**0.5)
        if self.image_size % self.patch_size or root * root != self.image_tokens or side % root:
            raise ValueError(
                "need image_size divisible by patch_size and (image_size/patch_size) divisible by √image_tokens"
            )


def _tokenizer_corpus() -> list[str]:
    """Text the tokenizer learns its merges from: every prompt, label name and a sample of teacher traces."""
    from chexreason.data.phantom import generate
    from chexreason.teachers import TeacherCase, TemplateTeacher

    corpus = [prompt.text for prompt in ALL_PROMPTS.values()]
    corpus += [", ".join(CHEXPERT_LABELS), ", ".join(NIH_LABELS)]
    samples = generate("a", 300, seed=12345, size=64)
    cases = [TeacherCase(s.id, s.positive_labels, view=s.params["view"], params=s.params) for s in samples]
    teacher = TemplateTeacher()
    for key in ("free_reasoning", "reasoning_narrative", "reasoning_a"):
        fmt = ANSWER_FORMATS[key]
        corpus += [
            fmt.render(c.labels or ("No Finding",), r) for c, r in zip(cases, teacher.write(cases, fmt), strict=True)
        ]
    return corpus


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Gemma3's special tokens and the reasoning tags as single tokens."""
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL, *TAGS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[START_OF_TURN, END_OF_TURN, *TAGS],
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=2048,
    )
    tokenizer.chat_template = gemma3_chat_template
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, image_tokens: int) -> Gemma3Processor:
    """A `Gemma3Processor` (Gemma's chat template) resizing images to `image_size` px, `image_tokens` per image."""
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=gemma3_chat_template,
        image_seq_length=image_tokens,
    )


def save_random_gemma3(
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    text: dict,
    vision: dict,
    image_tokens: int,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> int:
    """Save a random-initialised Gemma3 VLM of the given text and vision configuration values, its special tokens
    those of `tokenizer`, with a processor; returns its parameter count. `device`: where to initialise it (a
    GPU initialises billions of weights in seconds)."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (BOI, EOI, IMAGE, PAD, EOS, BOS)}
    config = Gemma3Config(
        text_config={**text, "pad_token_id": ids[PAD], "eos_token_id": ids[EOS], "bos_token_id": ids[BOS]},
        vision_config=vision,
        mm_tokens_per_image=image_tokens,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration(config).to(dtype)
    model.generation_config.pad_token_id = ids[PAD]
    model.generation_config.eos_token_id = [ids[EOS], tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    model.save_pretrained(output_dir)
    build_processor(tokenizer, vision["image_size"], image_tokens).save_pretrained(output_dir)
    return sum(p.numel() for p in model.parameters())


def build_tiny(output_dir: str | Path, spec: TinySpec | None = None, seed: int = 0) -> Path:
    """Build and save a random-initialised tiny Gemma3 VLM with its processor; returns `output_dir`."""
    spec = spec or TinySpec()
    tokenizer = build_tokenizer(spec.vocab_size)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "head_dim": spec.text_hidden // spec.text_heads,
        "max_position_embeddings": spec.max_positions,
        "sliding_window": 512,
    }
    vision = {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 4,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "num_channels": 3,
    }
    n_params = save_random_gemma3(output_dir, tokenizer, text, vision, spec.image_tokens, seed)
    logger.info("built a tiny Gemma3 VLM with %.2f M parameters in %s", n_params / 1e6, output_dir)
    return Path(output_dir)
