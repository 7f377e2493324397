"""Model sets: spec validation, one shared base, mixed-adapter batches, decoding, streaming, sampling.

The model set used here is the tiny random-initialised Gemma3 (`chexreason.training.tiny_model.build_tiny`) with two
LoRA adapters whose B matrices are set to seeded noise, so base, "sft" and "grpo" really answer differently.
It is built once per session by the `tiny_set` / `models` fixtures in conftest.py.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from chexreason import model_set_spec
from chexreason.modeling import (
    BASE_ADAPTER,
    REPO_ROOT,
    Completion,
    CompletionDecoder,
    GenerationSettings,
    ModelSet,
    ModelSetError,
    is_hub_id,
    load_model_set,
    read_model_set,
)
from chexreason.prompts import get_prompt
from chexreason.training import LM_PROJECTIONS
from chexreason.training.grpo import BEST_ADAPTER


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: for a model this small, OpenMP's second thread only adds waiting, and on a
    busy 2-core machine a generate call took 4 s with two threads against 0.05 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (80, 100), dtype=np.uint8))  # "L", not square
    rgba = Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), mode="RGBA")
    return [grey, rgba]


def budget(max_new_tokens: int, **sampling) -> GenerationSettings:
    """How the tests decode: greedy with a small token budget, or sampling when asked."""
    return GenerationSettings(max_new_tokens=max_new_tokens, **sampling)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chexreason-stream"]


# -------------------------------------------------------------------------------------------------- spec

TWO = "checkpoints:\n  - {name: a, model: org/model}\n  - {name: b, model: org/model}\n"


def _one(**fields: str) -> str:
    """A valid two-checkpoint set whose second checkpoint gets `fields`."""
    extra = "".join(f", {key}: {value}" for key, value in fields.items())
    return f"checkpoints:\n  - {{name: a, model: org/model}}\n  - {{name: b, model: org/model{extra}}}\n"


BAD_SPECS = [
    # YAML syntax error (unclosed flow sequence)
    ("checkpoints: [", "could not parse"),
    # a list at the top level instead of a mapping
    ("- {name: a, model: org/model}\n", "must be a mapping with a 'checkpoints' list"),
    # no checkpoints at all
    ("name: x\n", "'checkpoints' must be a list"),
    # one checkpoint: nothing to compare
    ("checkpoints:\n  - {name: a, model: org/model}\n", "2 to 4 checkpoints, found 1"),
    # five checkpoints: more columns than a comparison holds
    ("checkpoints:\n" + "".join(f"  - {{name: c{i}, model: org/model}}\n" for i in range(5)), "found 5"),
    # the same name twice: results would overwrite each other
    ("checkpoints:\n  - {name: a, model: org/model}\n  - {name: a, model: org/model}\n", "duplicate checkpoint names"),
    # a name with a space (names are results keys and PEFT adapter names)
    ("checkpoints:\n  - {name: 'my model', model: org/model}\n  - {name: b, model: org/model}\n", "needs a 'name'"),
    # a checkpoint written as a bare string
    ("checkpoints:\n  - org/model\n  - {name: b, model: org/model}\n", "must be a mapping with 'name'"),
    # no model
    ("checkpoints:\n  - {name: a}\n  - {name: b, model: org/model}\n", "missing 'model'"),
    # unknown prompt key
    (_one(prompt="free_reasonin"), "unknown prompt 'free_reasonin'"),
    # a typo in a key would otherwise silently serve the bare base model
    (_one(adaptor="sft"), "unknown key(s) ['adaptor']"),
    # an unknown top-level key
    ("models: []\n" + TWO, "unknown key(s) ['models']"),
    # an unquoted commit hash of digits is read as a number
    (_one(revision="123456"), "'revision' must be a string"),
    # a local adapter that does not exist (explicitly local)
    (_one(adapter="./missing"), "adapter './missing' not found"),
    # a bare relative name that is not a Hub id is local, and missing
    (_one(adapter="sft"), "adapter 'sft' not found"),
    # a folder that holds no adapter
    (_one(adapter="./empty"), "has no adapter_config.json"),
    # a local model folder that holds no model
    (_one(model="./empty"), "has no config.json"),
    # a model reference that is not a string
    (_one(model="[1, 2]"), "'model' must be a non-empty string"),
    # Qwen pixel bounds: both or neither, ordered
    ("min_pixels: 200704\n" + TWO, "min_pixels and max_pixels go together"),
    ("min_pixels: 401408\nmax_pixels: 200704\n" + TWO, "min <= max"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_model_sets_are_refused_with_a_clear_error(tmp_path: Path, text: str, message: str):
    (tmp_path / "empty").mkdir()
    path = tmp_path / "set.yaml"
    path.write_text(text)
    with pytest.raises(ModelSetError, match=None) as error:
        read_model_set(path)
    assert message in str(error.value)


def test_every_fault_of_a_file_is_named_at_once(tmp_path: Path):
    """One round trip per typo is what makes config files painful: all of them come in one message."""
    path = tmp_path / "set.yaml"
    path.write_text(
        "models: 1\ncheckpoints:\n  - {name: a, model: org/m, adaptor: x}\n  - {name: b, model: org/m, revision: 7}\n"
    )
    with pytest.raises(ModelSetError) as error:
        read_model_set(path)
    message = str(error.value)
    assert "unknown key(s) ['models']" in message and "checkpoint 'a': unknown key(s) ['adaptor']" in message
    assert "checkpoint 'b': 'revision' must be a string" in message


def test_tiny_set_spec_resolves_paths_next_to_the_yaml(tiny_set: Path):
    spec = read_model_set(tiny_set)
    assert spec.name == "tiny-test" and spec.names == ("base", "sft", "grpo")
    assert [c.display_title for c in spec.checkpoints] == ["Base", "SFT", "GRPO"]
    root = tiny_set.parent.resolve()
    assert {c.model for c in spec.checkpoints} == {str(root / "base")}
    assert [c.adapter for c in spec.checkpoints] == [None, str(root / "sft"), str(root / "grpo")]
    assert len({c.base_key for c in spec.checkpoints}) == 1


def test_bundled_examples_validate_without_loading():
    qwen = read_model_set("qwen-vs-nv-reason")  # Hub ids only: nothing local to check
    assert [c.model for c in qwen.checkpoints] == ["Qwen/Qwen2.5-VL-3B-Instruct", "nvidia/NV-Reason-CXR-3B"]
    assert len({c.base_key for c in qwen.checkpoints}) == 2 and all(c.adapter is None for c in qwen.checkpoints)

    paper = read_model_set("medgemma-4b-paper", check_paths=False)  # its adapters are trained by the user
    assert {c.model for c in paper.checkpoints} == {"google/medgemma-4b-it"}
    assert len({c.base_key for c in paper.checkpoints}) == 1
    # Its adapters are the folders the paper recipes' stages write: SFT's `<output_dir>/adapter` and GRPO's best
    # policy by validation macro-F1, `<output_dir>/best_adapter` (the paper's Table 4 selection).
    recipes = {name: yaml.safe_load((REPO_ROOT / "train/recipes/medgemma-4b" / f"{name}.yaml").read_text())
               for name in ("sft_free_reasoning", "grpo_hard")}  # fmt: skip
    sft_out, grpo_out = (REPO_ROOT / recipes[name]["output_dir"] for name in ("sft_free_reasoning", "grpo_hard"))
    assert REPO_ROOT / recipes["grpo_hard"]["sft_adapter"] == sft_out / "adapter"
    assert [c.adapter for c in paper.checkpoints] == [None, str(sft_out / "adapter"), str(grpo_out / BEST_ADAPTER)]
    assert {c.max_new_tokens for c in paper.checkpoints} == {recipes["grpo_hard"]["max_completion_length"]}
    assert all(get_prompt(c.prompt).protocol == "think_solution" for c in paper.checkpoints)
    if not (sft_out / "adapter").exists():
        with pytest.raises(ModelSetError, match="not found"):
            read_model_set("medgemma-4b-paper")


def test_bare_names_are_looked_up_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "demo.yaml").write_text(f"name: {folder}\n" + TWO)
    monkeypatch.setattr(
        model_set_spec, "SEARCH_PATTERNS", (tmp_path / "first" / "{name}.yaml", tmp_path / "second" / "{name}.yaml")
    )
    assert read_model_set("demo").name == "first"
    (tmp_path / "first" / "demo.yaml").unlink()
    assert read_model_set("demo").name == "second"
    with pytest.raises(ModelSetError, match="no model set named 'nothing'"):
        read_model_set("nothing")
    with pytest.raises(ModelSetError, match="not found"):
        read_model_set(tmp_path / "missing.yaml")


def test_hub_ids_and_local_paths():
    assert is_hub_id("google/medgemma-4b-it")
    assert not is_hub_id("/abs/path") and not is_hub_id("outputs/a/b")


# ------------------------------------------------------------------------------------------------ loading


def test_checkpoints_sharing_a_base_hold_one_copy(models: ModelSet):
    from peft import PeftModel

    assert models.checkpoints == ("base", "sft", "grpo")
    assert len(models.bases) == 1
    model = models.model_of("base")
    assert type(model) is PeftModel and model is models.model_of("sft") is models.model_of("grpo")
    assert not model.training
    assert models.bases[0].adapter_names == {"base": BASE_ADAPTER, "sft": "sft", "grpo": "grpo"}
    # One storage per base weight: the distinct storages are exactly the model's own parameters.
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))
    counts = models.parameter_counts()
    assert counts["base"].adapter == 0 and counts["sft"].adapter == counts["grpo"].adapter > 0
    assert counts["base"].base == counts["sft"].base == counts["grpo"].base
    assert models.loaded_parameters() == counts["base"].base + counts["sft"].adapter + counts["grpo"].adapter


# --------------------------------------------------------------------------------------------- generation


def test_mixed_adapter_batch_equals_each_checkpoint_alone(models: ModelSet, tiny_set: Path, images):
    """The key check: one batch mixing base, sft and grpo rows gives what each would give on its own."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    mixed = models.generate(images, settings=budget(12))
    assert len(mixed) == 2 and all(len(row) == 3 and all(isinstance(t, str) for t in row) for row in mixed)
    decoder = models.decoder_of("base")
    processor = models.processor_of("base")
    text = processor.apply_chat_template(
        get_prompt("free_reasoning").messages(), add_generation_prompt=True, tokenize=False
    )
    inputs = processor(
        text=[text] * 2, images=[[im.convert("RGB")] for im in images], add_special_tokens=False, return_tensors="pt"
    )
    for j, name in enumerate(models.checkpoints):
        alone = models.generate(images, checkpoint_names=[name], settings=budget(12))
        assert [row[0] for row in alone] == [row[j] for row in mixed], name
        # An independent reference: a fresh model with only this adapter, no adapter_names at all.
        reference = AutoModelForImageTextToText.from_pretrained(tiny_set.parent / "base", use_safetensors=True)
        if name != "base":
            reference = PeftModel.from_pretrained(reference, tiny_set.parent / name)
        with torch.inference_mode():
            sequences = reference.eval().generate(**inputs, max_new_tokens=12, do_sample=False)
        expected = [decoder.decode(ids) for ids in sequences[:, inputs["input_ids"].shape[1] :].tolist()]
        assert expected == [row[j] for row in mixed], name
    # The adapters really change the answers, or the comparison above would prove nothing.
    assert len({tuple(row) for row in zip(*mixed, strict=True)}) == 3


def test_rows_with_different_prompts_are_padded_correctly(tiny_set: Path, tmp_path: Path, images):
    """Different prompts in one batch mean left padding; each row must still match its solo run."""
    from peft import PeftModelForCausalLM

    root = tiny_set.parent.resolve()
    path = tmp_path / "prompts.yaml"
    path.write_text(
        "checkpoints:\n"
        f"  - {{name: grpo, model: {root / 'base'}, adapter: {root / 'grpo'}, prompt: free_reasoning}}\n"
        f"  - {{name: sft, model: {root / 'base'}, adapter: {root / 'sft'}, prompt: reasoning_a}}\n"
        f"  - {{name: base, model: {root / 'base'}, prompt: only_label}}\n"
    )
    models = load_model_set(path)
    assert type(models.model_of("base")) is PeftModelForCausalLM  # the first adapter's task type decides
    mixed = models.generate(images[:1], settings=budget(10))[0]
    assert mixed == [
        models.generate(images[:1], checkpoint_names=[n], settings=budget(10))[0][0] for n in models.checkpoints
    ]
    assert (
        models.prompt_for("base").key == "only_label" and models.prompt_for("base", "reasoning_b").key == "reasoning_b"
    )


def test_generate_follows_the_requested_checkpoints(models: ModelSet, images):
    full = models.generate(images, settings=budget(6))
    subset = models.generate(images, checkpoint_names=["grpo", "base"], settings=budget(6))
    assert subset == [[row[2], row[0]] for row in full]
    with pytest.raises(KeyError, match="unknown checkpoint 'rl'"):
        models.generate(images, checkpoint_names=["rl"])
    with pytest.raises(ValueError, match="without repeats"):
        models.generate(images, checkpoint_names=["sft", "sft"])


def test_generate_batch_equals_one_call(models: ModelSet, images):
    assert models.generate_batch(images, batch_size=1, progress=False, settings=budget(6)) == models.generate(
        images, settings=budget(6)
    )
    lazy = models.generate_batch(
        iter(images),
        batch_size=1,
        progress=False,
        settings=budget(6, do_sample=True, seed=4),
    )
    assert lazy == models.generate(images, settings=budget(6, do_sample=True, seed=4))


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(models: ModelSet, images):
    sampled = models.generate(images, settings=budget(10, do_sample=True, seed=7))
    assert sampled == models.generate(images, settings=budget(10, do_sample=True, seed=7))
    alone = models.generate(images, checkpoint_names=["sft"], settings=budget(10, do_sample=True, seed=7))
    assert [row[0] for row in alone] == [row[1] for row in sampled]
    assert sampled != models.generate(images, settings=budget(10, do_sample=True, seed=8))


def test_complete_batch_says_which_answers_ran_out_of_tokens(models: ModelSet, images):
    settings = GenerationSettings(max_new_tokens=4)
    completions = models.complete_batch(images, batch_size=1, progress=False, settings=settings)
    assert [[c.text for c in row] for row in completions] == models.generate(images, settings=settings)
    for row in completions:  # a row that stopped spent at most the budget minus its stop token
        assert all(c.truncated == (c.n_tokens == 4) for c in row)
    with pytest.raises(TypeError):  # decoding settings travel as one GenerationSettings, never as loose keywords
        models.generate(images, max_new_tokens=4)
    with pytest.raises(TypeError, match="must be a GenerationSettings"):
        models.generate(images, settings={"max_new_tokens": 4})


def test_a_completion_without_a_stop_token_is_truncated(models: ModelSet):
    decoder = models.decoder_of("base")
    eos, pad = decoder.tokenizer.eos_token_id, decoder.tokenizer.pad_token_id
    ids = decoder.tokenizer("Cardiomegaly", add_special_tokens=False)["input_ids"]
    assert decoder.complete([*ids, eos, pad]) == Completion("Cardiomegaly", len(ids), truncated=False)
    assert decoder.complete(ids) == Completion("Cardiomegaly", len(ids), truncated=True)


# ---------------------------------------------------------------------------------------------- decoding


def test_decoding_keeps_the_reasoning_tags(models: ModelSet):
    tokenizer = models.processor_of("base").tokenizer
    decoder = models.decoder_of("base")
    answer = "<think>Big heart.</think><solution>Cardiomegaly</solution>"
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    # Why skip_special_tokens=True cannot be used: the tags are special tokens of the tiny tokenizer.
    assert any(t.content == "<think>" and t.special for t in tokenizer.added_tokens_decoder.values())
    assert "<think>" not in tokenizer.decode(ids, skip_special_tokens=True)
    end_of_turn, pad = tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.pad_token_id
    image = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert decoder.decode([image, *ids, end_of_turn, pad, pad]) == answer
    assert decoder.decode([*ids[:3], tokenizer.eos_token_id, *ids[3:]]) == tokenizer.decode(ids[:3])


def test_decoder_drops_only_non_tag_special_tokens(models: ModelSet):
    tokenizer = models.processor_of("base").tokenizer
    decoder = CompletionDecoder(tokenizer, [tokenizer.eos_token_id])
    tags = {tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<solution>", "</solution>")}
    assert not tags & decoder.drop_ids
    assert {tokenizer.pad_token_id, tokenizer.bos_token_id} <= decoder.drop_ids


# ---------------------------------------------------------------------------------------------- streaming


def test_stream_grows_to_the_generate_output(models: ModelSet, images):
    updates = list(models.stream(images[0], settings=budget(12)))
    assert len(updates) >= 2 and all(len(update) == 3 for update in updates)
    for earlier, later in itertools.pairwise(updates):
        assert all(b.startswith(a) for a, b in zip(earlier, later, strict=True))
    assert list(updates[-1]) == models.generate(images[:1], settings=budget(12))[0]
    subset = list(models.stream(images[1], checkpoint_names=["grpo", "base"], settings=budget(8)))
    assert list(subset[-1]) == models.generate(images[1:], checkpoint_names=["grpo", "base"], settings=budget(8))[0]
    assert not _stream_threads()


def test_stream_reraises_errors_from_the_generation_thread(models: ModelSet, images, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(models.model_of("base"), "generate", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        list(models.stream(images[0], settings=budget(4)))
    assert not _stream_threads()


def test_closing_a_stream_early_stops_and_joins_its_thread(models: ModelSet, images):
    stream = models.stream(images[0], settings=budget(400))
    first = next(stream)
    assert len(first) == 3
    stream.close()
    assert not _stream_threads()
    assert not models.bases[0].lock.locked()


def test_concurrent_requests_on_one_base_are_serialised(models: ModelSet, images):
    """Without the per-base lock, PEFT's hooks of one call overwrite the other's adapter_names."""
    expected = {
        name: models.generate(images[:1], checkpoint_names=[name], settings=budget(8))[0][0]
        for name in models.checkpoints
    }
    failures: list[str] = []

    def ask(names: list[str]) -> None:
        try:
            for _ in range(3):
                answers = models.generate(images[:1], checkpoint_names=names, settings=budget(8))[0]
                failures.extend(n for n, a in zip(names, answers, strict=True) if a != expected[n])
        except ValueError as err:  # without the lock: "Length of `adapter_names` should be the same ..."
            failures.append(str(err))

    threads = [threading.Thread(target=ask, args=(names,)) for names in (["sft"], ["base", "grpo"], ["grpo"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_dora_adapters_are_refused(tiny_set: Path, tmp_path: Path):
    """PEFT cannot mix DoRA adapters in one batch; say so at load time, not on the first request."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = tiny_set.parent.resolve() / "base"
    model = AutoModelForImageTextToText.from_pretrained(base, use_safetensors=True)
    get_peft_model(model, LoraConfig(r=2, target_modules=LM_PROJECTIONS, use_dora=True)).save_pretrained(
        tmp_path / "dora"
    )
    path = tmp_path / "dora.yaml"
    path.write_text(
        f"checkpoints:\n  - {{name: base, model: {base}}}\n  - {{name: dora, model: {base}, adapter: ./dora}}\n"
    )
    with pytest.raises(ModelSetError, match="DoRA"):
        load_model_set(path)


def test_prompts_use_the_chat_template_saved_with_the_adapters(tiny_set: Path, tmp_path: Path):
    """Each checkpoint is prompted with the template its adapter was trained with (saved beside it by train.sft and
    train.grpo); the bare base, and an adapter that carries none, with the processor's own."""
    import shutil

    from chexreason.model_set import _prompt_text

    marked = "{{ bos_token }}MARKED {% for m in messages %}{{ m['role'] }}{% endfor %}"  # a template one can spot
    other = "{{ bos_token }}OTHER {% for m in messages %}{{ m['role'] }}{% endfor %}"
    base = tiny_set.parent.resolve() / "base"
    for name, template in (("sft", marked), ("grpo", other)):
        shutil.copytree(tiny_set.parent / name, tmp_path / name)
        (tmp_path / name / "chat_template.jinja").write_text(template)
    path = tmp_path / "templated.yaml"
    path.write_text(
        "checkpoints:\n"
        + "".join(f"  - {{name: {n}, model: {base}, adapter: ./{n}}}\n" for n in ("sft", "grpo"))
        + f"  - {{name: base, model: {base}}}\n"
    )
    models = load_model_set(path)  # adapters trained with different templates share the base
    loaded, prompt = models.bases[0], get_prompt("free_reasoning")
    assert "MARKED" in _prompt_text(loaded, "sft", prompt) and "OTHER" in _prompt_text(loaded, "grpo", prompt)
    own = loaded.processor.apply_chat_template(prompt.messages(), add_generation_prompt=True, tokenize=False)
    assert _prompt_text(loaded, "base", prompt) == own and "MARKED" not in own


@pytest.mark.parametrize("original", ["gemma3", "qwen2_5_vl"])  # the MedGemma and Qwen2.5-VL recipes' templates
def test_a_training_template_prompts_as_its_original(tiny: Path, original: str):
    """Why the bare base may share its adapters' training template: with add_generation_prompt the two render the
    same prompt text (the {% generation %} markers only tag the assistant's tokens when there is an answer)."""
    import trl
    from transformers import AutoProcessor

    folder = Path(trl.__file__).parent / "chat_templates"
    tokenizer = AutoProcessor.from_pretrained(tiny).tokenizer
    system = [{"role": "system", "content": [{"type": "text", "text": "You are an expert radiologist."}]}]
    for messages in (get_prompt("free_reasoning").messages(), system + get_prompt("reasoning_a").messages()):
        templates = [(folder / f"{name}.jinja").read_text() for name in (original, f"{original}_training")]
        rendered = [
            tokenizer.apply_chat_template(messages, chat_template=t, tokenize=False, add_generation_prompt=True)
            for t in templates
        ]
        assert rendered[0] == rendered[1]
