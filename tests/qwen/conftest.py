"""A tiny random Qwen2.5-VL, built offline, for the Qwen path of the code (`make test-qwen`).

Qwen2.5-VL's processor needs torchvision, which does not import beside requirements.txt's CPU torch
(DESIGN §6): these tests are marked `qwen`, left out of `make test`, and run in `.venv-qwen` (torch 2.14.1 +
torchvision 0.29.1) by `make test-qwen`. Anywhere torchvision is missing they skip with that reason.
"""

from pathlib import Path

import pytest
import torch

# Qwen2.5-VL's special tokens as its tokenizer spells them.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
SPECIAL = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)


def build_tiny_qwen(output_dir: Path, seed: int = 0) -> Path:
    """A random-initialised Qwen2.5-VL (~0.5 M parameters) with Qwen's chat template, special tokens, image and
    video processors and a byte-level BPE tokenizer trained here (the reasoning tags are single tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from chexreason.training.tiny_model import (  # the tiny Gemma3's corpus: our prompts and traces
        TAGS,
        _tokenizer_corpus,
    )

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[*SPECIAL, *TAGS], initial_alphabet=alphabet)
    core.train_from_iterator(_tokenizer_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, *TAGS],
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.chat_template = qwen2_5_vl_chat_template
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},  # head_dim 16
        "bos_token_id": ids[ENDOFTEXT], "eos_token_id": ids[IM_END], "pad_token_id": ids[ENDOFTEXT],
    }  # fmt: skip
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "fullatt_block_indexes": [1], "window_size": 112, "patch_size": 14, "spatial_merge_size": 2}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids[IM_END], ids[ENDOFTEXT]]  # as Qwen2.5-VL-3B-Instruct's
    model.generation_config.pad_token_id = ids[ENDOFTEXT]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),  # Qwen's defaults: 4 to 1,280 visual tokens per image
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=qwen2_5_vl_chat_template,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    pytest.importorskip("torchvision", reason="Qwen2.5-VL's processor needs torchvision: run `make test-qwen`")
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen") / "base")
