"""The shipped real dataset `deepseek-v3-sglang`: DeepSeek-V3 expert loads published by
the SGLang team, one static workload per file, scored under the cross-workload protocol.

Source: the statistics attached to sgl-project/sglang issue 6017 (the DeepSeek-V3
large-scale expert-parallel reproduction), as re-hosted in GeneratedRandomly/
SGLang-reproduce, folder attachment_ep_statistics/ (commit c79682c). Each file is the
`{"logical_count": [61 layers][256 experts]}` that SGLang's --init-expert-location reads.

Build (the files are not shipped, the dataset made from them is):

    python -m eplb_bench.data.real DIRECTORY_OF_THE_JSON_FILES
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eplb_bench.core.record import CROSS_WORKLOAD
from eplb_bench.data.dataset import DatasetError
from eplb_bench.data.formats import read_workloads
from eplb_bench.data.loadstats import dataset_statistics, layer_figure_percentiles, rank_correlation
from eplb_bench.data.manifests import sha256_of, write_dataset_files
from eplb_bench.data.models import expert_shape

NAME = "deepseek-v3-sglang"
MODEL = "DeepSeek-V3 / R1"
# DeepSeek-V3's routing (its config: n_group 8, topk_group 4, num_experts_per_tok 8).
ROUTING = {"top_k": 8, "num_groups": 8, "topk_groups": 4}
# DeepSeek-V3 has 61 layers, the first 3 dense: the files list them with zero counts.
DENSE_LAYERS = [0, 1, 2]
# How the replay draws steps around each static workload (eplb_bench.data.steps): the
# synthetic deepseek-v3's step model (tokens per step, over-dispersion), calibrated to these loads.
REPLAY = {
    "steps": 1100,
    "history_steps": 100,
    "tokens_per_step": {"prefill": 8192, "decode": 2048},
    "concentration": 200.0,
    "seed": 6017,
    "why": "each workload is one aggregate with no steps; steps are drawn around its expert shares with the "
           "step model of the synthetic deepseek-v3 (its tokens per step and concentration), and as many steps "
           "are served as that dataset's replay serves",
}

SCENARIOS = (
    # DeepSeek's prefill deployment (EP32, 32 redundant experts, 4 nodes) is also the
    # public evaluators' 288/8/4/32: one scenario serves both.
    {"name": "prefill EP32 (public evaluators)", "num_replicas": 288, "num_groups": 8, "num_nodes": 4, "num_gpus": 32},
    {"name": "decode EP144", "num_replicas": 288, "num_groups": 8, "num_nodes": 18, "num_gpus": 144},
)


@dataclass(frozen=True)
class Workload:
    """One published file: a benchmark's prefill or decode instance."""

    name: str
    stage: str
    input_tokens: int
    output_tokens: int | None

    def description(self) -> str:
        if self.output_tokens is None:
            return f"{self.stage} of {self.input_tokens}-token inputs"
        return (f"{self.stage} instance of a benchmark with {self.input_tokens} input and {self.output_tokens} "
                f"output tokens per request")


WORKLOADS = (
    Workload("prefill_in512", "prefill", 512, None),
    Workload("prefill_in1024", "prefill", 1024, None),
    Workload("prefill_in2048", "prefill", 2048, None),
    Workload("prefill_in500out1500", "prefill", 500, 1500),
    Workload("prefill_in1000out1000", "prefill", 1000, 1000),
    Workload("prefill_in2000out100", "prefill", 2000, 100),
    Workload("decode_in1000out1000", "decode", 1000, 1000),
    Workload("decode_in2000out100", "decode", 2000, 100),
)


def cross_pairs() -> list[list[str]]:
    """The (plan, serve) pairs scored besides in-sample: prefill at one input length ->
    another (every ordered pair of the pure prefill workloads), and the prefill ->
    decode of each request mix published in both stages."""
    lengths = [w.name for w in WORKLOADS if w.stage == "prefill" and w.output_tokens is None]
    pairs = [[plan, serve] for plan in lengths for serve in lengths if plan != serve]
    stages = {(w.input_tokens, w.output_tokens, w.stage): w.name for w in WORKLOADS}
    for workload in WORKLOADS:
        decode = stages.get((workload.input_tokens, workload.output_tokens, "decode"))
        if workload.stage == "prefill" and decode is not None:
            pairs.append([workload.name, decode])
    return pairs


PROVENANCE = (
    "Real per-expert token counts of DeepSeek-V3/R1 served by SGLang with large-scale expert parallelism, "
    "published by the SGLang team with its DeepSeek-V3 reproduction instructions (sgl-project/sglang issue 6017, "
    "an attached archive), as re-hosted in GeneratedRandomly/SGLang-reproduce, attachment_ep_statistics/ "
    "(commit c79682c); the input format of SGLang's --init-expert-location. Each file is one aggregate per "
    "workload: there is no time order inside a file or between files, hence the cross-workload protocol. "
    "Layers 0-2 (DeepSeek-V3's dense layers, all zero) are dropped: 58 MoE layers remain, and export puts the "
    "dense layers back. Caveats: sgl-project/sglang issue 6353 reports that per-layer token totals differ "
    "between layers in some prefill files (not exactly tokens x top-k); the source carries no licence file, "
    "the counts are measurements and are cited here."
)


def manifest_fields(windows: np.ndarray, meta: dict, sources: list[Path]) -> dict:
    """Everything the manifest holds besides name, file and sha256."""
    described = []
    for workload, entry, source in zip(WORKLOADS, meta["workloads"], sources):
        described.append({**entry, "stage": workload.stage, "input_tokens": workload.input_tokens,
                          "output_tokens": workload.output_tokens, "description": workload.description(),
                          "source_sha256": sha256_of(source)})
    names = [w.name for w in WORKLOADS]
    prefill = [index for index, w in enumerate(WORKLOADS) if w.stage == "prefill"]
    pairs = cross_pairs()
    statistics = dataset_statistics(windows, SCENARIOS[0]["num_gpus"])
    statistics.pop("rank_correlation_consecutive")  # the workloads have no order
    statistics["layer_figures_prefill"] = layer_figure_percentiles(windows[prefill])
    statistics["rank_correlation_pairs"] = {
        f"{plan} -> {serve}": round(rank_correlation(windows[names.index(plan)], windows[names.index(serve)]), 4)
        for plan, serve in pairs}
    return {
        "model": MODEL,
        "num_layers": windows.shape[1],
        "num_logical": windows.shape[2],
        "top_k": ROUTING["top_k"],
        "num_groups": ROUTING["num_groups"],
        "num_windows": windows.shape[0],
        "window_steps": None,
        "routing": dict(ROUTING),
        "expert_shape": expert_shape(MODEL).as_dict(),
        "replay": dict(REPLAY),
        "protocol": CROSS_WORKLOAD,
        "workloads": described,
        "pairs": pairs,
        "scenarios": list(SCENARIOS),
        "source_layers": meta["source_layers"],
        "provenance": PROVENANCE,
        "statistics": statistics,
    }


def build(source_dir: Path, directory: Path) -> dict:
    """Read the published files from `source_dir`, write the dataset into `directory`."""
    sources = [Path(source_dir) / f"{workload.name}.json" for workload in WORKLOADS]
    windows, meta = read_workloads(sources)
    if meta["source_layers"]["dropped"] != DENSE_LAYERS:
        raise DatasetError(f"{source_dir}: layers without load are {meta['source_layers']['dropped']}, "
                           f"expected DeepSeek-V3's dense layers {DENSE_LAYERS}")
    return write_dataset_files(Path(directory), NAME, windows, manifest_fields(windows, meta, sources))


if __name__ == "__main__":
    from eplb_bench.data.catalog import datasets_dir

    print(NAME, build(Path(sys.argv[1]), datasets_dir())["sha256"])
