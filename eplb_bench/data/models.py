"""The routed-expert shape of each model the datasets name, for the cost model
(eplb_bench.core.costmodel): hidden size, expert intermediate size and bytes per
weight, from each model's published configuration. A manifest carries its model's
shape ("expert_shape"); this table, keyed on the manifest's `model`, is where the
shipped manifests' shapes come from and what a manifest without one falls back on."""

from __future__ import annotations

from eplb_bench.core.costmodel import CostModelError, ExpertShape

EXPERT_SHAPES: dict[str, ExpertShape] = {
    "DeepSeek-V3 / R1": ExpertShape(7168, 2048, 1.0, "deepseek-ai/DeepSeek-V3 config.json (hidden_size, "
                                                     "moe_intermediate_size); FP8 weights"),
    "DeepSeek-V2-Lite": ExpertShape(2048, 1408, 2.0, "deepseek-ai/DeepSeek-V2-Lite config.json; BF16"),
    "Qwen3-235B-A22B": ExpertShape(4096, 1536, 2.0, "Qwen/Qwen3-235B-A22B config.json; BF16"),
    "Qwen3-30B-A3B": ExpertShape(2048, 768, 2.0, "Qwen/Qwen3-30B-A3B config.json; BF16"),
    "Kimi K2": ExpertShape(7168, 2048, 1.0, "moonshotai/Kimi-K2-Instruct config.json; FP8 weights"),
    "GPT-OSS-120B": ExpertShape(2880, 2880, 4.25 / 8, "openai/gpt-oss-120b config.json; MXFP4 "
                                                      "(4-bit values and a shared 8-bit scale per 32)"),
    "Mixtral 8x7B": ExpertShape(4096, 14336, 2.0, "mistralai/Mixtral-8x7B-v0.1 config.json; BF16"),
}


def expert_shape(model: str | None) -> ExpertShape:
    """The expert shape of `model`; CostModelError for a model the table lacks."""
    try:
        return EXPERT_SHAPES[model]
    except KeyError:
        known = ", ".join(sorted(EXPERT_SHAPES))
        raise CostModelError(f"no expert shape for model {model!r} (known: {known})") from None


def dataset_expert_shape(meta: dict, where: str = "dataset") -> ExpertShape:
    """The expert shape a dataset's manifest (`meta`) carries, else its model's in the
    table; CostModelError (one line, led by `where`) when neither gives one."""
    if "expert_shape" in meta:
        return ExpertShape.from_dict(meta["expert_shape"], f"{where}: expert_shape")
    try:
        return expert_shape(meta.get("model"))
    except CostModelError as exc:
        raise CostModelError(f"{where}: {exc}; give the manifest an expert_shape") from None
