"""Statistics of expert loads, for dataset manifests and calibration (array code).

Every function takes loads `[..., num_layers, num_logical]` and reduces the last axis.
"""

from __future__ import annotations

import numpy as np


def max_over_mean(loads: np.ndarray) -> np.ndarray:
    """[..., L, E] -> [..., L] hottest expert load over the mean expert load."""
    mean = loads.mean(-1)
    return np.divide(loads.max(-1), mean, out=np.ones_like(mean, dtype=float), where=mean > 0)


def gini(loads: np.ndarray) -> np.ndarray:
    """[..., L, E] -> [..., L] Gini coefficient of each layer's expert loads."""
    ordered = np.sort(loads.astype(float), axis=-1)
    n = ordered.shape[-1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    total = ordered.sum(-1)
    return np.divide((weights * ordered).sum(-1), n * total, out=np.zeros_like(total), where=total > 0)


def top_share(loads: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """[..., L, E] -> [..., L] share of the load taken by the top `fraction` of experts."""
    count = max(1, int(round(fraction * loads.shape[-1])))
    top = -np.partition(-loads.astype(float), count - 1, axis=-1)[..., :count]
    total = loads.sum(-1).astype(float)
    return np.divide(top.sum(-1), total, out=np.zeros_like(total), where=total > 0)


def idle_count(loads: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """[..., L, E] -> [..., L] experts under `threshold` times the layer's mean load."""
    return (loads < threshold * loads.mean(-1, keepdims=True)).sum(-1)


def contiguous_gpu_imbalance(loads: np.ndarray, num_gpus: int) -> np.ndarray:
    """[..., L, E] -> [..., L] GPU max/mean with experts placed contiguously, no redundancy.

    GPU g holds experts g * E / num_gpus ... (g + 1) * E / num_gpus - 1.
    """
    per_gpu = loads.reshape(*loads.shape[:-1], num_gpus, -1).sum(-1)
    return max_over_mean(per_gpu)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two [L, E] load arrays, per layer, averaged over layers."""
    def ranks(values):
        return np.argsort(np.argsort(values, axis=-1, kind="stable"), axis=-1, kind="stable").astype(float)

    a, b = ranks(first), ranks(second)
    a -= a.mean(-1, keepdims=True)
    b -= b.mean(-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return float(np.mean((a * b).sum(-1) / denominator))


def consecutive_rank_correlations(windows: np.ndarray) -> list[float]:
    """[W, L, E] -> W - 1 rank correlations of each window with the next."""
    return [rank_correlation(windows[i], windows[i + 1]) for i in range(len(windows) - 1)]


# The per-layer figures a synthetic dataset is calibrated on, against real loads.
LAYER_FIGURES = {"expert_max_over_mean": max_over_mean, "gini": gini, "top10_share": top_share}
PERCENTILES = {"p10": 10, "median": 50, "p90": 90}


def layer_figure_percentiles(loads: np.ndarray) -> dict:
    """loads: [..., L, E] -> {figure: {"p10", "median", "p90"}}: each LAYER_FIGURES
    figure per layer, pooled over every leading index (windows, workloads), and its
    10th, 50th and 90th percentiles."""
    return {name: {label: round(float(np.percentile(figure(loads), q)), 4) for label, q in PERCENTILES.items()}
            for name, figure in LAYER_FIGURES.items()}


def summary(values: np.ndarray) -> dict:
    """min / median / mean / max of an array, rounded for a manifest."""
    values = np.asarray(values, dtype=float)
    return {key: round(float(fn(values)), 4) for key, fn in
            (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))}


def dataset_statistics(windows: np.ndarray, num_gpus: int | None, first_steps: np.ndarray | None = None) -> dict:
    """Manifest statistics of windows [W, L, E]: per layer, averaged over windows, and summaries.

    GPU figures assume contiguous placement on `num_gpus` GPUs (1 when it is missing or
    does not divide the experts); with `first_steps` [S, L, E], also one step's.
    """
    if not num_gpus or windows.shape[-1] % num_gpus:
        num_gpus = 1
    expert = max_over_mean(windows)
    layer_gini = gini(windows)
    stats = {
        "expert_max_over_mean": summary(expert),
        "expert_max_over_mean_per_layer": [round(float(v), 3) for v in expert.mean(0)],
        "gini": summary(layer_gini),
        "gini_per_layer": [round(float(v), 3) for v in layer_gini.mean(0)],
        "top10_share": summary(top_share(windows)),
        "idle_experts_per_layer": summary(idle_count(windows)),
        "contiguous_gpus": num_gpus,
        "gpu_max_over_mean_window": summary(contiguous_gpu_imbalance(windows, num_gpus).mean(-1)),
        "rank_correlation_consecutive": [round(c, 4) for c in consecutive_rank_correlations(windows)],
    }
    if first_steps is not None and len(first_steps):
        stats["gpu_max_over_mean_step"] = summary(contiguous_gpu_imbalance(first_steps, num_gpus).mean(-1))
    return stats
