"""The GRPO stage's parts: the policy and its KL reference, the rewards as TRL calls them, the callbacks that keep
the nuanced reward's window across resumes and the best policy by validation macro-F1.

Why it is shaped this way:

- **Reference = the SFT policy.** The policy is the base with the SFT adapter loaded *trainable*
  (`load_policy`) and handed to `GRPOTrainer` without a ``peft_config``. With ``beta != 0`` TRL 1.16 then adds
  a second adapter, ``"ref"``, copies the SFT weights into it (``trl/trainer/grpo_trainer.py:478-506``), keeps no
  separate reference model (``:986-990``) and computes the reference log-probs with ``"ref"`` active
  (``:2723-2737``). ``"ref"`` is created frozen and is not in the optimizer, so it stays the SFT policy: the
  paper's reference. (A fresh LoRA on the base would make the *base* the reference.)
- **Rewards read the token ids.** TRL decodes completions with ``skip_special_tokens=True``
  (``grpo_trainer.py:2244``), which deletes ``<think>``/``<solution>`` where a tokenizer registers them as special
  tokens (the tiny one does): every output would be unparseable. `TrainerReward` re-decodes each completion from
  its ``completion_ids`` with the decoder evaluation uses (`chexreason.modeling.CompletionDecoder`), so rewards
  and evaluation read the same text. The first one also logs the batch's fail rate (``fail_rate``, the share of
  unparseable completions) with TRL's ``log_metric``: no zero-weight pseudo-reward, no change to
  ``reward_weights`` or to the advantages.
- **Only the policy adapter is saved** (`save_policy`): PEFT's ``save_pretrained`` would also write the frozen
  ``"ref"`` copy. TRL's own checkpoints keep ``ref/`` so that a resumed run has the same reference.
- **Stateful rewards survive a resume.** `RewardStateCallback` writes each stateful reward's ``state_dict()`` (the
  nuanced reward's sliding window) into every checkpoint, one file per process, before the trainer state that
  makes the checkpoint complete (`chexreason.training.resume.ExactResume`): each training process keeps its own
  window over the completions it scores, and a checkpoint without it is never resumed from.
- **Best policy as in the paper's Table 4.** `BestPolicyCallback` scores the policy at every save on the first
  ``validation_samples`` images of ``sft_validation`` (greedy, `chexreason.modeling.ModelSet.generate_batch`,
  `chexreason.metrics.score`) and keeps the adapter with the highest macro-F1 in ``<output_dir>/best_adapter``.
  It runs on the main process only, with the unwrapped model (not under DeepSpeed ZeRO-3, whose sharded
  weights it cannot generate from). The checkpoint is complete before its validation runs, so a run killed
  during a validation resumes from that checkpoint and validates it before training on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from transformers import TrainerCallback

from chexreason import atomic
from chexreason.decoding import CompletionDecoder, stop_token_ids
from chexreason.faults import fault_point
from chexreason.loading import adapter_chat_template
from chexreason.model_set_spec import is_hub_id
from chexreason.parsing import parse_completion
from chexreason.prompts import AnswerFormat
from chexreason.rewards import (
    NUANCED_WEIGHTS_JSON,
    NuancedReward,
    RewardFunc,
    count_labels,
    label_prevalence,
    nuanced_reward_weights,
    reward_from_recipe,
)
from chexreason.training.common import grpo_rows, load_model
from chexreason.training.grpo_selection import BEST_ADAPTER as BEST_ADAPTER  # re-exported: they lived here
from chexreason.training.grpo_selection import BEST_JSON as BEST_JSON
from chexreason.training.grpo_selection import POLICY as POLICY
from chexreason.training.grpo_selection import VALIDATION_JSON as VALIDATION_JSON
from chexreason.training.grpo_selection import BestPolicyCallback as BestPolicyCallback
from chexreason.training.grpo_selection import ValidationSet as ValidationSet
from chexreason.training.grpo_selection import checkpoint_folder as checkpoint_folder
from chexreason.training.grpo_selection import save_policy as save_policy
from chexreason.training.grpo_selection import validate_policy as validate_policy
from chexreason.training.resume import install_stage_output

if TYPE_CHECKING:
    from peft import PeftModel
    from trl import GRPOTrainer

    from chexreason.training.grpo_logs import CompletionSamples

logger = logging.getLogger(__name__)

REFERENCE = "ref"  # TRL's frozen copy of it, the KL reference
ADAPTER_CONFIG = "adapter_config.json"
REWARD_STATE_JSON = "reward_state_rank{rank}.json"  # stateful rewards, per process, in each checkpoint
FAIL_RATE = "fail_rate"  # the logged metric: share of unparseable completions in a batch


# ---------------------------------------------------------------------------------------------- policy


def load_policy(model_args: Any, sft_adapter: str | Path) -> tuple[PeftModel, Any]:
    """The base model (`chexreason.training.load_model`) with the SFT adapter loaded *trainable*, and the processor.

    Passed to `GRPOTrainer` without a ``peft_config``, this makes TRL keep a frozen copy of the SFT adapter as
    the KL reference (see the module docstring). The processor takes the chat template saved with the SFT adapter
    when it carries one, so GRPO prompts exactly as SFT trained and `save_policy` passes that template on.
    """
    from peft import PeftModel

    folder = Path(sft_adapter)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"no SFT adapter at {folder}; train it with `python -m train.sft` (or set sft_recipe)")
    reference = str(model_args.model_name_or_path)
    if not Path(reference).exists() and not is_hub_id(reference):
        raise FileNotFoundError(f"model_name_or_path {reference!r} is neither a local folder nor a Hub id")
    model, processor = load_model(model_args)
    if (template := adapter_chat_template(folder)) is not None:
        processor.chat_template = template
    policy = PeftModel.from_pretrained(model, str(folder), is_trainable=True)  # adapter name: "default"
    return policy, processor


def completion_decoder(model: Any, processor: Any) -> CompletionDecoder:
    """The decoder evaluation uses: cut at the first stop token, keep the protocol's tags."""
    return CompletionDecoder(processor.tokenizer, stop_token_ids(model, processor.tokenizer))


# --------------------------------------------------------------------------------------------- rewards


class TrainerReward:
    """One of our rewards as TRL calls it: each completion is read from its token ids (TRL's own text has lost
    the protocol's tags when they are special tokens), and, with `log_fail_rate`, the share of unparseable
    completions is logged as ``fail_rate``.

    TRL names a reward by ``__name__``, so this keeps the wrapped reward's name (its logs stay
    ``rewards/hard_reward/mean`` and so on). Outside a trainer (no ``completion_ids``) the given completions
    are used as they are. With `samples`, the texts and values are kept for ``completions.jsonl``
    (`chexreason.training.grpo_logs`); the first reward (`log_fail_rate`) starts each batch there.
    """

    def __init__(
        self,
        reward: RewardFunc,
        decoder: CompletionDecoder | None,
        protocol: str,
        log_fail_rate: bool = False,
        samples: CompletionSamples | None = None,
    ) -> None:
        self.reward = reward
        self.decoder = decoder
        self.protocol = protocol
        self.log_fail_rate = log_fail_rate
        self.samples = samples
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)

    def __call__(
        self, completions: Sequence, completion_ids: Sequence[Sequence[int]] | None = None, **kwargs
    ) -> list[float]:
        n_tokens = None
        if completion_ids is not None and self.decoder is not None:
            completions = [self.decoder.decode(ids) for ids in completion_ids]
            n_tokens = [len(self.decoder.cut(ids)) for ids in completion_ids]
        log_metric = kwargs.get("log_metric")
        if self.log_fail_rate and callable(log_metric) and completions:
            failed = sum(not parse_completion(c, self.protocol).parseable for c in completions)
            log_metric(FAIL_RATE, failed / len(completions))
        values = self.reward(completions, completion_ids=completion_ids, **kwargs)
        if self.samples is not None:
            if self.log_fail_rate:
                self.samples.start(completions, n_tokens, kwargs.get("ground_truth"))
            self.samples.add(self.__name__, values)
        return values


def build_rewards(
    names: Sequence[str],
    protocol: str,
    length_threshold: int,
    length_penalty: float,
    rl_dataset: Dataset | None = None,
    weights_dir: str | Path | None = None,
) -> dict[str, RewardFunc]:
    """Our rewards by name (`chexreason.rewards.get_reward`), each reading outputs under `protocol`; the hard
    reward gets the recipe's length threshold and λ_len.

    With `rl_dataset` (the whole RL split, whatever ``max_train_samples`` takes of it), the nuanced reward weights
    a wrong label by that split's label prevalence (`chexreason.rewards.label_prevalence` of its ``ground_truth``)
    instead of CheXpert's train prevalence, its default outside a run. With `weights_dir` too (the main process's
    output_dir), the counts, prevalences and costs are written to ``<weights_dir>/nuanced_reward_weights.json``.
    """
    options = {"protocol": protocol, "length_threshold": length_threshold, "length_penalty": length_penalty}
    if rl_dataset is None:
        return {name: reward_from_recipe(name, **options) for name in names}
    counts, n_rows = count_labels(rl_dataset["ground_truth"])
    prevalence = label_prevalence(counts, n_rows)
    rewards = {name: reward_from_recipe(name, **options, label_prevalence=prevalence) for name in names}
    nuanced = rewards.get("nuanced")
    if weights_dir is not None and isinstance(nuanced, NuancedReward):
        path = Path(weights_dir) / NUANCED_WEIGHTS_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nuanced_reward_weights(nuanced.config, counts, n_rows), indent=1) + "\n")
        logger.info("nuanced reward: false-positive weights from %d RL rows, written to %s", n_rows, path)
    return rewards


def trainer_rewards(
    rewards: Mapping[str, RewardFunc],
    decoder: CompletionDecoder,
    protocol: str,
    samples: CompletionSamples | None = None,
) -> list[TrainerReward]:
    """`rewards` wrapped for TRL (`TrainerReward`); the first also logs the fail rate (once per batch), and all
    keep their values in `samples` when given."""
    wrapped = [TrainerReward(reward, decoder, protocol, samples=samples) for reward in rewards.values()]
    wrapped[0].log_fail_rate = True
    return wrapped


# ------------------------------------------------------------------------------------------- callbacks


class RewardStateCallback:
    """Saves each stateful reward's ``state_dict()`` (the nuanced reward's window) into every checkpoint and
    restores it on resume, one file per training process (each process keeps its own window). `write` is
    registered with the trainer (`ExactResume.before_state`), so the window is in the checkpoint before the
    checkpoint is complete; `required` names the file a resumable checkpoint must hold."""

    def __init__(self, rewards: Mapping[str, Any], process_index: int = 0, world_size: int = 1) -> None:
        self.rewards = {name: r for name, r in rewards.items() if hasattr(r, "state_dict")}
        self.process_index = process_index
        self.world_size = world_size

    def _path(self, folder: Path) -> Path:
        return folder / REWARD_STATE_JSON.format(rank=self.process_index)

    @property
    def required(self) -> list[str]:
        """Every process's window file: a checkpoint is resumable only with all of them (each rank checks all)."""
        return [REWARD_STATE_JSON.format(rank=rank) for rank in range(self.world_size)] if self.rewards else []

    def write(self, folder: Path) -> None:
        if not self.rewards:
            return
        states = {name: reward.state_dict() for name, reward in self.rewards.items()}
        atomic.write_text(self._path(folder), json.dumps(states) + "\n")
        fault_point("reward-state-written")

    def restore(self, checkpoint: str | Path | None) -> dict[str, dict]:
        """Load the states saved in `checkpoint`; returns them (empty when there is nothing to restore)."""
        if checkpoint is None or not self.rewards:
            return {}
        path = self._path(Path(checkpoint))
        if not path.is_file():  # `last_checkpoint` skips such a checkpoint; one named by hand resumes without
            logger.warning("%s has no %s: the rewards' windows start empty", checkpoint, path.name)
            return {}
        states = json.loads(path.read_text())
        for name, reward in self.rewards.items():
            if name in states:
                reward.load_state_dict(states[name])
                logger.info("restored the %s reward's state (%d predictions)", name, len(states[name]["window"]))
        return states


# ----------------------------------------------------------------------------------------------- a run


@dataclass
class GRPORun:
    """A GRPO trainer with its rewards and callbacks, ready to train, resume and save."""

    trainer: GRPOTrainer
    processor: Any
    rewards: dict[str, RewardFunc]
    reward_state: RewardStateCallback
    best_policy: BestPolicyCallback | None

    @property
    def policy(self) -> PeftModel:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    def train(self, resume_from_checkpoint: str | None = None) -> None:
        """Train, resuming from `resume_from_checkpoint` (weights, optimizer, rewards' windows, validations)."""
        self.reward_state.restore(resume_from_checkpoint)
        if self.best_policy is not None:
            self.best_policy.restore(resume_from_checkpoint)
        self.trainer.train(resume_from_checkpoint=resume_from_checkpoint)

    @property
    def checkpoint_files(self) -> list[str]:
        """The files this run writes into each checkpoint before it is complete (`last_checkpoint`'s ``required``)."""
        return self.reward_state.required

    def save(self, output_dir: str | Path) -> Path:
        """Save ``<output_dir>/grpo_log.json``, then the final policy as ``<output_dir>/adapter`` (installed whole)."""
        output_dir = Path(output_dir)
        adapter = output_dir / "adapter"
        if self.trainer.accelerator.is_main_process:
            validation = self.best_policy.history if self.best_policy is not None else []
            best = self.best_policy.best if self.best_policy is not None else None
            log = {"log_history": self.trainer.state.log_history, "validation": validation, "best": best}
            save = lambda folder: save_policy(self.policy, folder, self.processor)  # noqa: E731
            install_stage_output(adapter, save, output_dir / "grpo_log.json", log)
        return adapter


def build_grpo_run(model_args: Any, config: Any, built: Mapping[str, Dataset], answer_format: AnswerFormat) -> GRPORun:
    """Policy (base + trainable SFT adapter), rewards, data and callbacks → a `GRPORun`.

    Args:
        model_args: `train.configs.ModelArguments` (the base model).
        config: `train.configs.GRPOStageConfig`.
        built: the built datasets (`chexreason.data.build.load_built`): ``rl`` and ``sft_validation``.
        answer_format: the SFT answer format; its prompt asks every RL and validation image.
    """
    from chexreason.training.grpo_logs import ClipRateTrainer, CompletionSampleCallback, CompletionSamples

    policy, processor = load_policy(model_args, config.sft_adapter)
    protocol = answer_format.protocol
    rewards = build_rewards(
        config.rewards,
        protocol,
        config.reward_length_threshold,
        config.reward_length_penalty,
        rl_dataset=built["rl"],  # the nuanced reward's false-positive weights follow the RL split's labels
        weights_dir=config.output_dir if config.process_index == 0 else None,  # recorded once, by the main process
    )
    reward_state = RewardStateCallback(rewards, process_index=config.process_index, world_size=config.world_size)
    samples = CompletionSamples(protocol)
    callbacks: list[TrainerCallback] = [CompletionSampleCallback(samples, config.output_dir)]
    best_policy = None
    if config.validation_samples:
        validation = ValidationSet.from_dataset(
            built["sft_validation"], answer_format.prompt, config.validation_samples
        )
        best_policy = BestPolicyCallback(
            validation,
            processor,
            config.output_dir,
            max_new_tokens=config.max_completion_length,
            batch_size=config.per_device_eval_batch_size,
            main_process=config.process_index == 0,
        )
        callbacks.append(best_policy)
    trainer = ClipRateTrainer(  # GRPOTrainer, also logging how often the gradient norm was clipped
        model=policy,  # a PeftModel and no peft_config: TRL's reference is a frozen copy of the SFT adapter
        reward_funcs=trainer_rewards(rewards, completion_decoder(policy, processor), protocol, samples),
        args=config,
        # TRL 1.16 takes one image per row from the `image` column (grpo_trainer.py:2402) and passes every other
        # column (`ground_truth`) to the rewards; the prompt is the one the SFT policy was trained with.
        train_dataset=grpo_rows(built["rl"], answer_format.prompt, config.max_train_samples),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.before_state(reward_state.write)  # the window is in a checkpoint before it is complete
    return GRPORun(trainer, processor, rewards, reward_state, best_policy)
