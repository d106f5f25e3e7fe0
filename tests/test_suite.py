"""The standard suite: shipped, reproducible, and calibrated to published figures."""

import json

import numpy as np
import pytest

from eplb_bench import load_dataset
from eplb_bench.data.catalog import datasets_dir, shipped_names
from eplb_bench.data.manifests import verify_manifest
from eplb_bench.data.loadstats import contiguous_gpu_imbalance, gini, max_over_mean, rank_correlation, top_share
from eplb_bench.data.suite import SUITE, regenerates_identically
from eplb_bench.data.synthetic import SyntheticSpec, generate

SUITE_NAMES = ["deepseek-v3", "deepseek-v2-lite", "qwen3-235b", "qwen3-30b", "kimi-k2", "gpt-oss-120b", "mixtral-8x7b"]


def windows_of(name):
    return load_dataset(name).windows.numpy()


def manifest_of(name):
    return json.loads((datasets_dir() / f"{name}.json").read_text())


def test_the_suite_ships_complete():
    assert set(SUITE_NAMES) <= set(shipped_names())
    total = sum(p.stat().st_size for p in datasets_dir().iterdir())
    assert total < 20 * 2**20
    for name in SUITE_NAMES:
        manifest = manifest_of(name)
        data = load_dataset(name)
        assert data.num_windows >= 12
        assert (manifest["num_layers"], manifest["num_logical"]) == tuple(data.windows.shape[1:])
        assert data.scenarios and verify_manifest(datasets_dir() / f"{name}.json") is None
        stages = {(p["domain"], p["stage"]) for p in manifest["phases"]}
        assert len({domain for domain, _ in stages}) >= 2, "needs a domain switch"
        assert any(p["windows"][1] - p["windows"][0] >= 2 for p in manifest["phases"]), "needs a drift period"
        for key in ("top_k", "num_groups", "generator", "sha256", "provenance", "statistics"):
            assert key in manifest
        assert manifest["provenance"].startswith("synthetic")


def test_model_shapes_and_scenarios():
    shapes = {name: tuple(load_dataset(name).windows.shape[1:]) for name in SUITE_NAMES}
    assert shapes == {"deepseek-v3": (58, 256), "deepseek-v2-lite": (26, 64), "qwen3-235b": (94, 128),
                      "qwen3-30b": (48, 128), "kimi-k2": (60, 384), "gpt-oss-120b": (36, 128), "mixtral-8x7b": (32, 8)}
    scenarios = {name: [s.as_dict() for s in load_dataset(name).scenarios] for name in SUITE_NAMES}
    assert scenarios["deepseek-v3"] == [{"num_replicas": 288, "num_groups": 8, "num_nodes": 4, "num_gpus": 32},
                                        {"num_replicas": 288, "num_groups": 8, "num_nodes": 18, "num_gpus": 144}]
    assert scenarios["kimi-k2"] == [{"num_replicas": 480, "num_groups": 1, "num_nodes": 12, "num_gpus": 96}]
    assert [s["num_replicas"] for s in scenarios["qwen3-30b"]] == [128, 144]


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_regenerating_from_the_manifest_reproduces_the_file(name):
    assert regenerates_identically(datasets_dir() / f"{name}.json") is None


def test_generator_prefix_is_the_start_of_the_full_history():
    spec = SyntheticSpec.from_dict(manifest_of("mixtral-8x7b")["generator"])
    assert np.array_equal(generate(spec, max_windows=2)[0], generate(spec)[0][:2])


def test_deepseek_v3_one_step_gpu_imbalance_at_ep32():
    # Published: per-iteration GPU max/mean ~2.56 at EP32 with contiguous placement.
    spec = SUITE["deepseek-v3"].spec
    _, steps = generate(spec, keep_steps=10, max_windows=1)
    per_step = contiguous_gpu_imbalance(steps, 32).mean(-1)
    assert 2.56 * 0.9 <= per_step.mean() <= 2.56 * 1.1
    window = contiguous_gpu_imbalance(windows_of("deepseek-v3")[0], 32).mean()
    # The real DeepSeek-V3 aggregates (deepseek-v3-sglang) are at 2.0-2.3 on their own, so the
    # published step figure is 1.1-1.3x the aggregate for this model, not the 1.5-1.7x
    # measured on Qwen3: both DeepSeek figures are kept, the ratio follows from them.
    assert 2.0 <= window <= 2.3
    assert 1.1 <= per_step.mean() / window <= 1.4


@pytest.mark.parametrize("name", ["qwen3-235b", "qwen3-30b"])
def test_qwen3_windows_match_published_skew(name):
    windows = windows_of(name)
    assert 5 <= max_over_mean(windows).min() and max_over_mean(windows).max() <= 16
    assert 0.5 <= gini(windows).min() and gini(windows).max() <= 0.75
    assert 0.3 <= top_share(windows).min() and top_share(windows).max() <= 0.6


def test_mixtral_is_markedly_flatter():
    flat = np.median(max_over_mean(windows_of("mixtral-8x7b")))
    for name in ["deepseek-v3", "qwen3-235b", "qwen3-30b", "kimi-k2", "gpt-oss-120b"]:
        assert np.median(max_over_mean(windows_of(name))) > 2 * flat
    assert gini(windows_of("mixtral-8x7b")).max() < 0.3


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_rank_correlation_within_and_across_domains(name):
    windows = windows_of(name)
    phases = manifest_of(name)["phases"]
    for phase in phases:
        first, last = phase["windows"]
        for i in range(first, last):
            assert rank_correlation(windows[i], windows[i + 1]) >= 0.8
    domains = {}
    for phase in phases:
        domains.setdefault(phase["domain"], phase["windows"][0])
    a, b = sorted(domains.values())[:2]
    assert abs(rank_correlation(windows[a], windows[b])) < 0.2


def test_rank_correlation_by_hand():
    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, a[:, ::-1]) == pytest.approx(-1.0)
    # ranks [0,1,2,3] vs [1,0,3,2]: 1 - 6 * 4 / (4 * 15) = 0.6
    assert rank_correlation(a, np.array([[2.0, 1.0, 4.0, 3.0]])) == pytest.approx(0.6)


def test_statistics_by_hand():
    loads = np.array([[0.0, 0.0, 0.0, 8.0], [2.0, 2.0, 2.0, 2.0]])
    assert max_over_mean(loads).tolist() == [4.0, 1.0]
    assert gini(loads).tolist() == pytest.approx([0.75, 0.0])
    assert top_share(loads, 0.25).tolist() == [1.0, 0.25]
    assert contiguous_gpu_imbalance(loads, 2).tolist() == [2.0, 1.0]


def test_decode_shift_keeps_a_partial_ranking():
    # Published prefill vs decode rank correlation: 0.45-0.85 (the shift is not held to >= 0.8);
    # deepseek-v3 is held to the real DeepSeek-V3 range instead (tests/test_calibration.py).
    for name in SUITE_NAMES:
        low, high = (0.67, 0.90) if name == "deepseek-v3" else (0.45, 0.85)
        windows = windows_of(name)
        for phase in manifest_of(name)["phases"]:
            if phase["stage"] == "decode":
                start = phase["windows"][0]
                assert low <= rank_correlation(windows[start - 1], windows[start]) <= high, name


def test_drift_moves_popularity_within_a_phase():
    base = SyntheticSpec.from_dict(manifest_of("deepseek-v2-lite")["generator"])
    still = generate(SyntheticSpec.from_dict({**base.as_dict(), "drift": 0.0}), max_windows=5)[0]
    drifting = generate(base, max_windows=5)[0]
    # Without drift windows differ by noise alone, and window 4 is as close to window 0 as window 1 is.
    assert rank_correlation(still[0], still[4]) > rank_correlation(still[0], still[1]) - 0.02
    assert rank_correlation(drifting[0], drifting[4]) < rank_correlation(drifting[0], drifting[1]) - 0.02


def test_group_limited_routing_concentrates_on_top_groups():
    from dataclasses import replace

    spec = replace(SUITE["deepseek-v3"].spec, num_layers=4, route_tokens=1024)
    limited = generate(spec, max_windows=1)[0][0]
    free = generate(replace(spec, topk_groups=0), max_windows=1)[0][0]
    group_share = lambda loads: np.sort(loads.reshape(4, 8, 32).sum(-1), axis=-1)[:, ::-1] / loads.sum(-1, keepdims=True)
    # Tokens restricted to their top 4 of 8 groups: the top groups take more of the load.
    assert (group_share(limited)[:, :4].sum(-1) > group_share(free)[:, :4].sum(-1)).all()


def test_top_k_mask_picks_what_argpartition_picks_also_on_ties():
    from eplb_bench.data.synthetic import kth_largest, top_k_mask

    rng = np.random.default_rng(0)
    for shape, k in [((50, 7, 384), 8), ((50, 7, 256), 8), ((40, 3, 8), 4), ((40, 3, 8), 2)]:
        for scores in (rng.integers(0, 5, shape).astype(float), rng.normal(size=shape)):
            scores[0, 0] = -np.inf
            chosen = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
            expected = np.zeros(shape, dtype=bool)
            np.put_along_axis(expected, chosen, True, axis=-1)
            assert np.array_equal(top_k_mask(scores, k), expected)
            assert np.array_equal(kth_largest(scores, k), np.sort(scores, axis=-1)[..., -k])


def test_routing_chunks_do_not_change_the_shares():
    from eplb_bench.data.synthetic import route_shares

    spec = SyntheticSpec(3, 64, 6, routing_groups=8, topk_groups=3, route_tokens=300)
    logits = np.random.default_rng(1).normal(size=(3, 64))
    shares = [route_shares(np.random.default_rng(2), logits, spec, chunk) for chunk in (1, 7, 128, 1024)]
    assert all(np.array_equal(shares[0], other) for other in shares[1:])
