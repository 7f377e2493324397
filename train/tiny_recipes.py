"""The tiny recipes (train/recipes/tiny/) relocated into one folder, so a run starts from nothing there and
overwrites nothing else (outputs/tiny, checkpoints/tiny). Used by the slow test of the whole recipe and by
`python -m benchmarks.tiny_recipe`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent / "recipes" / "tiny"
STAGES = ("data", "base", "sft", "grpo")


def recipes_in(folder: str | Path, overrides: dict[str, dict] | None = None) -> Path:
    """Write the tiny recipes into `folder` with every path moved there, and `overrides` ({stage: {field: value}})
    applied on top; returns the GRPO recipe, whose run builds every earlier stage from nothing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recipes = {stage: yaml.safe_load((RECIPES / f"{stage}.yaml").read_text()) for stage in STAGES}
    recipes["data"]["output_dir"] = str(folder / "data")
    recipes["base"].update(data_config=str(folder / "data.yaml"), output_dir=str(folder / "base"))
    moved = {"data_config": str(folder / "data.yaml"), "model_name_or_path": str(folder / "base" / "model")}
    recipes["sft"].update(moved, base_recipe=str(folder / "base.yaml"), output_dir=str(folder / "sft"))
    recipes["grpo"].update(moved, sft_recipe=str(folder / "sft.yaml"), sft_adapter=str(folder / "sft" / "adapter"),
                           output_dir=str(folder / "grpo"), export_dir=str(folder / "tiny"))  # fmt: skip
    for stage, values in (overrides or {}).items():
        recipes[stage].update(values)
    for stage, recipe in recipes.items():
        (folder / f"{stage}.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "grpo.yaml"
