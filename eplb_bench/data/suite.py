"""The standard dataset suite: real model shapes, synthetic loads calibrated to
published measurements (sources in each manifest's provenance).

Every dataset has 12 windows of 100 steps in three phases: a drifting prefill period
of domain A (windows 0-4), the decode stage of domain A (5-7), and a switch to an
unrelated domain B (8-11).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from eplb_bench.core.contract import Scenario
from eplb_bench.data.dataset import Dataset
from eplb_bench.data.manifests import read_manifest, write_dataset_files
from eplb_bench.data.loadstats import dataset_statistics
from eplb_bench.data.models import expert_shape
from eplb_bench.data.synthetic import Phase, SyntheticSpec, generate

SUITE_PHASES = (Phase(5, 0, "prefill"), Phase(3, 0, "decode"), Phase(4, 1, "prefill"))
# Held-out draws keep the three phases and both switches, in fewer windows (four
# scored window pairs instead of eleven), so that a draw costs a fraction of the suite.
HELDOUT_PHASES = (Phase(2, 0, "prefill"), Phase(1, 0, "decode"), Phase(2, 1, "prefill"))
# Steps of window 0 kept to measure one step's imbalance.
MEASURED_STEPS = 20

CALIBRATION_SOURCES = (
    "DeepSeek-R1 per-iteration GPU max/mean ~2.56 at EP32, contiguous placement (TensorRT-LLM blog on "
    "scaling expert parallelism); Qwen3-235B/30B aggregate expert max/mean 6-15, Gini 0.5-0.75, top 10% of "
    "experts 31-59% of tokens, 1-19 near-idle experts per layer; per-forward imbalance 1.5-1.7x the "
    "aggregate; unrelated domains rank-uncorrelated, prefill vs decode rank correlation 0.45-0.85; "
    "DeepSeek-V3 expert loads published by the SGLang team (sgl-project/sglang issue 6017; the shipped "
    "deepseek-v3-sglang): per-layer expert max/mean, Gini and top-10% share of its prefill workloads, "
    "prefill vs decode rank correlation of one request mix 0.71-0.88"
)


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    model: str
    spec: SyntheticSpec
    num_groups: int
    scenarios: tuple[dict, ...]
    calibrated_to: str


def _scenario(label: str, replicas: int, groups: int, nodes: int, gpus: int) -> dict:
    return {"name": label, "num_replicas": replicas, "num_groups": groups, "num_nodes": nodes, "num_gpus": gpus}


SUITE: dict[str, SuiteEntry] = {
    entry.name: entry
    for entry in [
        SuiteEntry(
            "deepseek-v3", "DeepSeek-V3 / R1",
            # Per-layer skew, group clustering and decode shift calibrated to the real deepseek-v3-sglang loads (the
            # figures: docs/datasets.md; tests/test_calibration.py holds them).
            SyntheticSpec(58, 256, 8, routing_groups=8, topk_groups=4, logit_spread=0.58, hot_layer_share=0.0,
                          spread_sigma=0.19, score_skew=0.17, hot_expert_gap=0.25, group_spread=0.45, drift=0.1,
                          decode_correlation=0.93, concentration=200.0, phases=SUITE_PHASES, seed=3001),
            8,
            (_scenario("prefill EP32", 288, 8, 4, 32), _scenario("decode EP144", 288, 8, 18, 144)),
            "one step at EP32, contiguous, no redundancy: GPU max/mean ~2.56 (TensorRT-LLM blog); per-layer "
            "expert max/mean, Gini and top-10% share (p10 / median / p90) of SGLang's real DeepSeek-V3 prefill loads",
        ),
        SuiteEntry(
            "deepseek-v2-lite", "DeepSeek-V2-Lite",
            SyntheticSpec(26, 64, 6, logit_spread=0.9, concentration=40.0, phases=SUITE_PHASES, seed=3002),
            8,
            (_scenario("public evaluators", 288, 8, 4, 32),),
            "the public evaluators' model shape and scenario; skew between DeepSeek-V3's and Qwen3's",
        ),
        SuiteEntry(
            "qwen3-235b", "Qwen3-235B-A22B",
            SyntheticSpec(94, 128, 8, logit_spread=1.2, idle_share=0.04, concentration=25.0,
                          phases=SUITE_PHASES, seed=3003),
            1,
            (_scenario("EP16", 144, 1, 2, 16),),
            "Qwen3 aggregate expert max/mean 6-15, Gini 0.5-0.75, top 10% share 31-59%, near-idle experts",
        ),
        SuiteEntry(
            "qwen3-30b", "Qwen3-30B-A3B",
            SyntheticSpec(48, 128, 8, logit_spread=1.2, idle_share=0.04, concentration=14.0,
                          phases=SUITE_PHASES, seed=3004),
            1,
            (_scenario("EP8 no redundancy", 128, 1, 1, 8), _scenario("EP8", 144, 1, 1, 8)),
            "Qwen3 aggregate expert max/mean 6-15, Gini 0.5-0.75, top 10% share 31-59%, near-idle experts",
        ),
        SuiteEntry(
            "kimi-k2", "Kimi K2",
            SyntheticSpec(60, 384, 8, logit_spread=1.0, idle_share=0.02, concentration=120.0,
                          phases=SUITE_PHASES, seed=3005),
            1,
            (_scenario("decode EP96", 480, 1, 12, 96),),
            "fine-grained skew like DeepSeek-V3 and Qwen3 (no published per-expert figures)",
        ),
        SuiteEntry(
            "gpt-oss-120b", "GPT-OSS-120B",
            SyntheticSpec(36, 128, 4, logit_spread=1.0, concentration=13.0, phases=SUITE_PHASES, seed=3006),
            1,
            (_scenario("EP8", 136, 1, 1, 8),),
            "moderate skew (no published per-expert figures)",
        ),
        SuiteEntry(
            "mixtral-8x7b", "Mixtral 8x7B",
            SyntheticSpec(32, 8, 2, logit_spread=0.4, concentration=12.0, tokens_per_step=4096,
                          decode_tokens_per_step=1024, phases=SUITE_PHASES, seed=3007),
            1,
            (_scenario("EP8", 16, 1, 1, 8),),
            "coarse experts, markedly flatter than the fine-grained models (as Qwen2-57B's 1.25-4)",
        ),
    ]
}


def manifest_fields(entry: SuiteEntry, windows: np.ndarray, first_steps: np.ndarray) -> dict:
    """Everything a suite manifest holds besides name, file and sha256."""
    starts = np.cumsum([0] + [phase.windows for phase in entry.spec.phases])
    return {
        "model": entry.model,
        "num_layers": entry.spec.num_layers,
        "num_logical": entry.spec.num_logical,
        "top_k": entry.spec.top_k,
        "expert_shape": expert_shape(entry.model).as_dict(),
        "num_groups": entry.num_groups,
        "num_windows": entry.spec.num_windows,
        "window_steps": entry.spec.window_steps,
        "scenarios": list(entry.scenarios),
        "phases": [
            {"windows": [int(start), int(start) + phase.windows - 1], "domain": phase.domain, "stage": phase.stage}
            for start, phase in zip(starts, entry.spec.phases)
        ],
        "provenance": f"synthetic (eplb_bench.data.synthetic), calibrated to: {entry.calibrated_to}. "
        f"Sources: {CALIBRATION_SOURCES}",
        "generator": entry.spec.as_dict(),
        "statistics": dataset_statistics(windows, entry.scenarios[0]["num_gpus"], first_steps),
    }


def build_suite_dataset(name: str, directory: Path) -> dict:
    """Generate one suite dataset into `directory` (`<name>.npz` and its manifest)."""
    entry = SUITE[name]
    windows, first_steps = generate(entry.spec, keep_steps=MEASURED_STEPS)
    return write_dataset_files(Path(directory), name, windows, manifest_fields(entry, windows, first_steps))


def heldout_seed() -> int:
    """A seed from the operating system's random source, drawn at run time."""
    return secrets.randbits(63)


def heldout_spec(name: str, seed: int) -> SyntheticSpec:
    """Suite dataset `name`'s generator parameters with `seed` and HELDOUT_PHASES."""
    return replace(SUITE[name].spec, seed=seed, phases=HELDOUT_PHASES)


def heldout_windows(name: str, seed: int) -> np.ndarray:
    """[5, num_layers, num_logical] int64: the windows of one held-out draw."""
    return generate(heldout_spec(name, seed))[0]


def heldout_dataset(name: str, seed: int, windows: np.ndarray | None = None) -> Dataset:
    """A fresh draw of suite dataset `name` (heldout_windows, or `windows` already
    drawn). It has no stored bounds (those belong to the public data) and is never
    written to disk."""
    entry, spec = SUITE[name], heldout_spec(name, seed)
    windows = heldout_windows(name, seed) if windows is None else windows
    return Dataset(name=name, windows=torch.from_numpy(windows), num_groups=entry.num_groups,
                   scenarios=[Scenario(**scenario) for scenario in entry.scenarios],
                   window_steps=spec.window_steps, source=f"held-out draw of {name} (seed {seed})",
                   meta={"model": entry.model, "top_k": spec.top_k, "generator": spec.as_dict(), "heldout_seed": seed})


def heldout_datasets(draws: list[tuple[str, int]], workers: int | None = None) -> list[Dataset]:
    """The held-out draws of (name, seed) pairs, generated in parallel processes (all
    before any program is timed, so the timings do not share the machine with them)."""
    workers = max(1, min(len(draws), workers or os.cpu_count() or 1))
    if workers == 1:
        return [heldout_dataset(name, seed) for name, seed in draws]
    # The largest first, so that the last one to finish is a small one.
    order = sorted(range(len(draws)), key=lambda i: -SUITE[draws[i][0]].spec.num_layers * SUITE[draws[i][0]].spec.num_logical)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {i: pool.submit(heldout_windows, *draws[i]) for i in order}
        return [heldout_dataset(name, seed, futures[i].result()) for i, (name, seed) in enumerate(draws)]


def regenerates_identically(manifest_path: Path) -> str | None:
    """Regenerate a synthetic dataset from its manifest's generator parameters alone.

    Returns None when the data file comes out with the manifest's sha256 (or the
    dataset is not synthetic), else why not.
    """
    manifest = read_manifest(Path(manifest_path))
    if "generator" not in manifest:
        return None  # not synthetic: nothing to regenerate
    try:
        spec = SyntheticSpec.from_dict(manifest["generator"])
    except (TypeError, ValueError) as exc:
        return f"unusable generator parameters ({exc})"
    windows = generate(spec)[0]
    with tempfile.TemporaryDirectory() as scratch:
        regenerated = write_dataset_files(Path(scratch), manifest["name"], windows, {})
    if regenerated["sha256"] != manifest["sha256"]:
        return f"regenerated sha256 {regenerated['sha256'][:12]}... differs from {manifest['sha256'][:12]}..."
    return None


if __name__ == "__main__":
    from eplb_bench.data.catalog import datasets_dir

    for suite_name in SUITE:
        print(suite_name, build_suite_dataset(suite_name, datasets_dir())["sha256"], flush=True)
