"""`chexreason.training.fused_head`: on CPU, TRL's fused LM head then projects only the labelled positions, and
the loss, log-probs, entropies and gradients stay what they were."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl.trainer.utils import add_fused_lm_head

from chexreason import fused_head
from chexreason.data.phantom import generate
from chexreason.prompts import get_answer_format

SCORED = 12  # labelled positions per row: the end of each sequence, as GRPO scores completions


@pytest.fixture
def projected_rows(monkeypatch):
    """Record how many positions each call of TRL's chunked head projects; restore TRL's device rule after."""
    rows: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction

    class Recording:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Recording)
    # TRL's own rule to start from (a stage run in this session may have patched it), put back after the test.
    monkeypatch.setattr(trl_utils, "_use_triton", fused_head._TRL_CHOICE)
    return rows


def _batch(tiny):
    processor = AutoProcessor.from_pretrained(tiny)
    fmt = get_answer_format("free_reasoning")
    answers = ["<think>Clear lungs.</think><solution>No Finding</solution>", "<think>" + "A rib. " * 9 + "</think>"]
    texts = [
        processor.apply_chat_template(
            [*fmt.prompt.messages(), {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            tokenize=False,
        )
        for answer in answers
    ]
    images = [[s.image.convert("RGB")] for s in generate("a", 2, seed=3, size=112)]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :-SCORED] = -100
    return batch, labels


def _forward_backward(tiny, batch, labels):
    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True).eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    out = model(**batch, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_cpu_head_projects_only_labelled_positions_with_the_same_results(tiny, projected_rows):
    batch, labels = _batch(tiny)
    stock, stock_grads = _forward_backward(tiny, batch, labels)
    assert fused_head.score_labelled_positions_only() and fused_head.score_labelled_positions_only()  # idempotent
    compact, compact_grads = _forward_backward(tiny, batch, labels)

    rows, length = labels.shape
    assert projected_rows == [rows * (length - 1), rows * SCORED]  # every position, then only the labelled
    torch.testing.assert_close(compact.loss, stock.loss)
    torch.testing.assert_close(compact.log_probs, stock.log_probs)
    torch.testing.assert_close(compact.entropy, stock.entropy)
    assert compact_grads.keys() == stock_grads.keys() and stock_grads
    for name, grad in stock_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, msg=name)
