"""The synthetic deepseek-v3 against the real DeepSeek-V3 loads of deepseek-v3-sglang:
every calibration figure, computed from the shipped files."""

import numpy as np
import pytest

from eplb_bench.data.catalog import load_dataset
from eplb_bench.data.loadstats import (
    LAYER_FIGURES,
    PERCENTILES,
    contiguous_gpu_imbalance,
    layer_figure_percentiles,
    max_over_mean,
    rank_correlation,
)

TOLERANCE = 0.10


def prefill_windows(dataset) -> np.ndarray:
    """[N, L, E] the prefill windows (synthetic phases) or workloads (real) of a dataset."""
    if "workloads" in dataset.meta:
        chosen = [i for i, w in enumerate(dataset.meta["workloads"]) if w["stage"] == "prefill"]
    else:
        chosen = [i for phase in dataset.meta["phases"] if phase["stage"] == "prefill"
                  for i in range(phase["windows"][0], phase["windows"][1] + 1)]
    return dataset.windows.numpy()[chosen]


@pytest.fixture(scope="module")
def figures():
    real = layer_figure_percentiles(prefill_windows(load_dataset("deepseek-v3-sglang")))
    synthetic = layer_figure_percentiles(prefill_windows(load_dataset("deepseek-v3")))
    return real, synthetic


@pytest.mark.parametrize("figure", LAYER_FIGURES)
@pytest.mark.parametrize("percentile", PERCENTILES)
def test_synthetic_skew_is_within_ten_percent_of_the_real_prefill(figures, figure, percentile):
    real, synthetic = figures
    assert synthetic[figure][percentile] == pytest.approx(real[figure][percentile], rel=TOLERANCE)


def test_the_real_prefill_figures_are_the_published_ones(figures):
    real, _ = figures
    # Measured on the SGLang files, prefill workloads pooled (docs/datasets.md).
    assert real["expert_max_over_mean"]["median"] == pytest.approx(6.02, abs=0.01)
    assert real["gini"]["median"] == pytest.approx(0.364, abs=0.001)
    assert real["top10_share"]["median"] == pytest.approx(0.292, abs=0.001)


def test_decode_shift_agrees_with_the_real_prefill_to_decode_correlation():
    real = load_dataset("deepseek-v3-sglang")
    names = real.workload_names
    mixes = [(plan, serve) for plan, serve in real.meta["pairs"] if serve.startswith("decode")]
    measured = [rank_correlation(real.windows[names.index(p)].numpy(), real.windows[names.index(s)].numpy())
                for p, s in mixes]
    assert len(measured) == 2 and 0.67 <= min(measured) and max(measured) <= 0.90
    synthetic = load_dataset("deepseek-v3")
    [decode] = [phase for phase in synthetic.meta["phases"] if phase["stage"] == "decode"]
    start = decode["windows"][0]
    windows = synthetic.windows.numpy()
    assert min(measured) <= rank_correlation(windows[start - 1], windows[start]) <= max(measured) + 0.02


def test_popular_experts_cluster_in_groups_as_in_the_real_loads():
    # Real layers' 8 group loads are far less even than a random order of their experts
    # gives; group_spread reproduces it (the hierarchical policy's burden on real loads).
    def group_imbalance(dataset):
        windows = prefill_windows(dataset).astype(float)
        return float(np.median(max_over_mean(windows.reshape(*windows.shape[:-1], 8, 32).sum(-1))))

    real, synthetic = load_dataset("deepseek-v3-sglang"), load_dataset("deepseek-v3")
    assert group_imbalance(synthetic) == pytest.approx(group_imbalance(real), rel=TOLERANCE)
    contiguous = [float(np.median(contiguous_gpu_imbalance(prefill_windows(d).astype(float), 32))) for d in (real, synthetic)]
    assert contiguous[1] == pytest.approx(contiguous[0], rel=TOLERANCE)
