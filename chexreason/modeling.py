"""Model sets, as one import: the names below live in the modules that own them, re-exported here.

- `chexreason.model_set_spec`: the model-set YAML format and its validation (`read_model_set`, `ModelSetSpec`).
- `chexreason.loading`: loading a set, one copy of each base with its adapters (`load_model_set`).
- `chexreason.model_set`: the loaded set and its batched, mixed-adapter, streamed generation (`ModelSet`).
- `chexreason.decoding`: how to decode (`GenerationSettings`) and token ids → text (`CompletionDecoder`).
"""

from chexreason.decoding import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    BatchTextStreamer,
    Completion,
    CompletionDecoder,
    GenerationSettings,
    row_seed,
    stop_token_ids,
)
from chexreason.loading import load_model_set, parse_dtype
from chexreason.model_set import BASE_ADAPTER, LoadedBase, ModelSet, ParameterCount
from chexreason.model_set_spec import (
    ADAPTER_WEIGHTS,
    BUNDLED_SETS,
    DEFAULT_PROMPT,
    MAX_CHECKPOINTS,
    MIN_CHECKPOINTS,
    REPO_ROOT,
    SEARCH_PATTERNS,
    CheckpointSpec,
    ModelSetError,
    ModelSetSpec,
    is_hub_id,
    pixel_bounds,
    read_model_set,
    resolve_model_set_path,
)

__all__ = [
    "ADAPTER_WEIGHTS",
    "BASE_ADAPTER",
    "BUNDLED_SETS",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_PROMPT",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "MAX_CHECKPOINTS",
    "MIN_CHECKPOINTS",
    "REPO_ROOT",
    "SEARCH_PATTERNS",
    "BatchTextStreamer",
    "CheckpointSpec",
    "Completion",
    "CompletionDecoder",
    "GenerationSettings",
    "LoadedBase",
    "ModelSet",
    "ModelSetError",
    "ModelSetSpec",
    "ParameterCount",
    "is_hub_id",
    "load_model_set",
    "parse_dtype",
    "pixel_bounds",
    "read_model_set",
    "resolve_model_set_path",
    "row_seed",
    "stop_token_ids",
]
