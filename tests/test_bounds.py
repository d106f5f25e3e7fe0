"""Lower bounds and the exact ILP against brute force, golden values and every balancer."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from eplb_bench import get_algorithm, list_algorithms, load_dataset, validate_placement
from eplb_bench.bounds import solver as bounds
from eplb_bench.bounds.store import bound_summary, compute_bounds
from eplb_bench.cli import main
from eplb_bench_algorithms.ilp import groups_on_one_node
from eplb_bench.data.catalog import datasets_dir, shipped_names
from eplb_bench.data.manifests import scenario_key, stored_lower_bounds


def compositions(total, parts):
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first,) + rest


def brute_force_peak(weight, num_replicas, num_gpus, num_groups=1, num_nodes=1, hierarchical=False):
    """The smallest peak GPU load over every placement: every count vector, every
    assignment of replicas to GPUs with equal slots (and groups whole on nodes,
    equal groups per node, when hierarchical)."""
    num_experts = len(weight)
    per_gpu, group_size = num_replicas // num_gpus, num_experts // num_groups
    gpus_per_node = num_gpus // num_nodes
    best = np.inf
    for counts in compositions(num_replicas, num_experts):
        replicas = [e for e in range(num_experts) for _ in range(counts[e])]
        for gpus in itertools.product(range(num_gpus), repeat=num_replicas):
            if any(gpus.count(g) != per_gpu for g in range(num_gpus)):
                continue
            if hierarchical:
                node_of_group = {}
                if any(node_of_group.setdefault(e // group_size, g // gpus_per_node) != g // gpus_per_node
                       for e, g in zip(replicas, gpus)):
                    continue
                nodes = list(node_of_group.values())
                if any(nodes.count(n) != num_groups // num_nodes for n in range(num_nodes)):
                    continue
            load = np.zeros(num_gpus)
            for e, g in zip(replicas, gpus):
                load[g] += weight[e] / counts[e]
            best = min(best, load.max())
    return best


def peak_of(weight, phy2log, logcnt, num_gpus):
    slot = (weight.double() / logcnt.double()).gather(1, phy2log)
    return slot.view(weight.shape[0], num_gpus, -1).sum(-1).max(-1).values


TINY_GLOBAL = [  # (replicas, gpus, experts)
    (4, 2, 2), (4, 2, 3), (4, 2, 4), (6, 2, 3), (6, 2, 4), (6, 2, 5), (4, 4, 3), (8, 4, 5), (6, 3, 4),
]


@pytest.mark.parametrize("num_replicas,num_gpus,num_experts", TINY_GLOBAL)
def test_ilp_reaches_the_brute_force_optimum_and_bounds_stay_below(num_replicas, num_gpus, num_experts):
    rng = np.random.default_rng(num_replicas * 100 + num_gpus * 10 + num_experts)
    weight = torch.tensor(rng.integers(0, 40, (2, num_experts)), dtype=torch.float64)
    report = {}
    phy2log, log2phy, logcnt = get_algorithm("ilp")(weight, num_replicas, 1, 1, num_gpus, report=report)
    validate_placement(phy2log, log2phy, logcnt, num_logical=num_experts, num_replicas=num_replicas,
                       num_gpus=num_gpus, num_layers=2)
    optimum = torch.tensor([brute_force_peak(row.numpy(), num_replicas, num_gpus) for row in weight])
    assert torch.allclose(peak_of(weight, phy2log, logcnt, num_gpus), optimum)
    assert report["optimal"] == 2 and report["max_gap"] == pytest.approx(0, abs=1e-9)
    with_solver = bounds.lower_bound(weight, num_replicas, 1, 1, num_gpus, time_limit=10)
    closed_form = bounds.lower_bound(weight, num_replicas, 1, 1, num_gpus, time_limit=0)
    assert torch.allclose(with_solver, optimum)  # solved to optimality, the bound is the optimum
    assert bool((closed_form <= optimum + 1e-9).all())


@pytest.mark.parametrize("seed", range(4))
def test_hierarchical_bounds_and_ilp_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    weight = torch.tensor(rng.integers(0, 30, (1, 4)), dtype=torch.float64)   # 4 groups of one expert
    hierarchical = brute_force_peak(weight[0].numpy(), 8, 4, num_groups=4, num_nodes=2, hierarchical=True)
    free = brute_force_peak(weight[0].numpy(), 8, 4)
    assert free <= hierarchical + 1e-9
    pieces = bounds.simple_bounds(weight.numpy(), 8, 4, 2, 4, policy="hierarchical")
    assert max(float(v[0]) for v in pieces.values()) <= hierarchical + 1e-9
    assert float(bounds.lower_bound(weight, 8, 4, 2, 4, time_limit=0, policy="global")[0]) <= free + 1e-9
    assert float(bounds.lower_bound(weight, 8, 4, 2, 4, time_limit=20, policy="hierarchical")[0]) == \
        pytest.approx(hierarchical)
    phy2log, _, logcnt = get_algorithm("ilp")(weight, 8, 4, 2, 4)
    assert float(peak_of(weight, phy2log, logcnt, 4)[0]) == pytest.approx(hierarchical)
    nodes = phy2log.view(2, 4)   # node n holds slots 4n .. 4n + 3; each group (= expert) on one node
    assert not set(nodes[0].tolist()) & set(nodes[1].tolist())


def test_replica_bound_golden_values():
    # Counts (2, 2, 1) give replicas 5, 3, 3: the best heaviest replica with 5 slots.
    weight = np.array([[10.0, 6.0, 3.0], [1.0, 1.0, 10.0]])
    assert bounds.replica_bound(weight, 5).tolist() == [5.0, 10 / 3]
    assert bounds.replica_bound(weight, 3).tolist() == [10.0, 10.0]
    assert bounds.mean_bound(weight, 2).tolist() == [9.5, 6.0]
    with pytest.raises(ValueError):
        bounds.replica_bound(weight, 2)


def test_group_split_bound_golden_value():
    # Groups 8, 7, 2, 1 over two nodes of two groups: {8, 1} and {7, 2} give 9 per node,
    # 4.5 per GPU; one expert per group, each node's two experts on four slots.
    weight = np.array([[8.0, 7.0, 2.0, 1.0]])
    assert bounds.group_split_bound(weight, 8, 4, 2, 4).tolist() == [4.5]
    assert len(bounds.equal_splits(8, 4)) == bounds.count_equal_splits(8, 4) == 105


def test_lower_bound_rejects_bad_input():
    with pytest.raises(ValueError, match="policy"):
        bounds.lower_bound(torch.ones(1, 4), 4, 1, 1, 2, policy="sideways")
    with pytest.raises(ValueError, match="non-negative"):
        bounds.lower_bound(-torch.ones(1, 4), 4, 1, 1, 2)


def test_ilp_on_a_standard_dataset_is_valid_and_no_worse_than_its_starts():
    dataset = load_dataset("gpt-oss-120b")
    scenario = dataset.scenarios[0]
    weight = dataset.windows[0][:2].double()
    report = {}
    phy2log, log2phy, logcnt = get_algorithm("ilp")(weight, scenario.num_replicas, scenario.num_groups,
                                                     scenario.num_nodes, scenario.num_gpus, time_limit=0.5,
                                                     report=report)
    validate_placement(phy2log, log2phy, logcnt, num_logical=dataset.num_logical,
                       num_replicas=scenario.num_replicas, num_gpus=scenario.num_gpus, num_layers=2)
    for start in ("fast", "deepseek", "refined_packing"):
        other = get_algorithm(start)(weight.float(), scenario.num_replicas, scenario.num_groups, scenario.num_nodes,
                                     scenario.num_gpus)
        assert bool((peak_of(weight, phy2log, logcnt, 8) <= peak_of(weight, other[0], other[2], 8) + 1e-6).all())
    assert report["layers"] == 2 and report["max_gap"] >= 0 and report["policy"] == "global"
    assert report["optimal"] + report["time_limit"] == 2


def shipped_scenarios():
    return [(name, index) for name in shipped_names() for index in range(len(load_dataset(name).scenarios))]


@pytest.mark.parametrize("name,index", shipped_scenarios())
def test_shipped_bounds_never_exceed_any_balancer(name, index):
    dataset = load_dataset(name)
    scenario = dataset.scenarios[index]
    stored = stored_lower_bounds(dataset, scenario, "global")
    assert stored is not None and not bool(stored.isnan().any()), "run eplb-bench bounds"
    args = (scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
    for window in (0, dataset.num_windows - 1):
        weight = dataset.windows[window].double()
        closed_form = bounds.lower_bound(weight, *args, time_limit=0)
        assert bool((closed_form <= stored[window] * (1 + 1e-12)).all())
        for algorithm in list_algorithms(include_slow=False):
            phy2log, _, logcnt = get_algorithm(algorithm)(weight.clone(), *args)
            assert bool((stored[window] <= peak_of(weight, phy2log, logcnt, scenario.num_gpus) * (1 + 1e-9)).all()), \
                algorithm
    hierarchical = stored_lower_bounds(dataset, scenario, "hierarchical")
    if bounds.hierarchical_applies(scenario.num_groups, scenario.num_nodes):
        assert hierarchical is not None
        for window in (0, dataset.num_windows - 1):
            weight = dataset.windows[window].double()
            assert bool((stored[window] <= hierarchical[window] * (1 + 1e-12)).all())
            # deepseek keeps every group on one node: the hierarchical bound holds for it.
            phy2log, _, logcnt = get_algorithm("deepseek")(weight.clone(), *args)
            assert bool((hierarchical[window] <= peak_of(weight, phy2log, logcnt, scenario.num_gpus) * (1 + 1e-9)).all())


@pytest.fixture
def small_dataset(tmp_path):
    """A copy of the mixtral manifest and data in a scratch folder, without bounds."""
    for suffix in (".json", ".npz"):
        shutil.copy(datasets_dir() / f"mixtral-8x7b{suffix}", tmp_path / f"mixtral-8x7b{suffix}")
    manifest_path = tmp_path / "mixtral-8x7b.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("bounds", None)
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


def test_bounds_command_stores_bounds_that_run_reports(small_dataset, capsys):
    assert main(["bounds", "--datasets", str(small_dataset), "--time-limit", "0", "--jobs", "2"]) == 0
    dataset = load_dataset(small_dataset)
    scenario = dataset.scenarios[0]
    entry = dataset.meta["bounds"][scenario_key(scenario)]["global"]
    assert entry["time_limit_s"] == 0 and entry["data_sha256"] == dataset.meta["sha256"]
    stored = stored_lower_bounds(dataset, scenario)
    expected = torch.stack([bounds.lower_bound(w, 16, 1, 1, 8, time_limit=0) for w in dataset.windows])
    assert torch.equal(stored, expected)
    assert "384/384" in capsys.readouterr().out
    assert main(["run", "--datasets", str(small_dataset), "--algorithms", "fast,deepseek", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for record in records:
        ceiling = float(np.mean([(w.double().sum(-1) / 8).sum() / stored[i].sum() for i, w in
                                 enumerate(dataset.windows[:-1])]))
        assert record["balancedness_ceiling"] == pytest.approx(ceiling)
        assert record["optimality_gap"] >= 0 and record["bound_policy"] == "global"
        # in-sample balancedness times (1 + gap) is the ceiling, window by window; on average close
        assert record["balancedness_gpu_insample"] <= record["balancedness_ceiling"] + 1e-12
    assert main(["run", "--datasets", str(small_dataset), "--algorithms", "fast"]) == 0
    table = capsys.readouterr().out
    assert "ceiling" in table and "gap in" in table


def test_run_table_says_slow_balancers_were_left_out(small_dataset, capsys):
    assert main(["run", "--datasets", str(small_dataset)]) == 0
    out = capsys.readouterr().out
    assert "left out (slow; name them with --algorithms): ilp" in out
    assert "gpu ceiling" not in out


def test_an_interrupted_bounds_run_keeps_what_it_finished(small_dataset):
    dataset = load_dataset(small_dataset)

    def stop_after_five(result, done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_bounds([dataset], time_limit=0, jobs=1, progress=stop_after_five)
    kept = stored_lower_bounds(load_dataset(small_dataset), dataset.scenarios[0])
    assert int((~kept.isnan()).sum()) == 5
    outcome = compute_bounds([load_dataset(small_dataset)], time_limit=0, jobs=1)
    assert outcome["skipped"] == 5 and outcome["done"] == 384 - 5
    summary = bound_summary(load_dataset(small_dataset))
    assert summary[0]["known"] == summary[0]["total"] == 384


def test_bounds_fan_out_over_a_dask_cluster(small_dataset):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        outcome = compute_bounds([load_dataset(small_dataset)], time_limit=0, executor=f"dask://{cluster.scheduler_address}")
    assert outcome["done"] == 384
    dataset = load_dataset(small_dataset)
    stored = stored_lower_bounds(dataset, dataset.scenarios[0])
    assert torch.equal(stored, torch.stack([bounds.lower_bound(w, 16, 1, 1, 8, time_limit=0) for w in dataset.windows]))


def test_bounds_command_rejects_bad_arguments(small_dataset, capsys):
    assert main(["bounds", "--datasets", str(small_dataset), "--executor", "tcp://x:1"]) == 2
    assert main(["bounds", "--datasets", str(small_dataset), "--jobs", "0"]) == 2
    assert "error" in capsys.readouterr().err


def test_ilp_keeps_groups_on_nodes_and_beats_its_hierarchical_starts():
    dataset = load_dataset("deepseek-v2-lite")
    scenario = dataset.scenarios[0]
    weight = dataset.windows[0][:2].double()
    arguments = (scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
    report = {}
    phy2log, log2phy, logcnt = get_algorithm("ilp")(weight, *arguments, time_limit=0.2, report=report)
    validate_placement(phy2log, log2phy, logcnt, num_logical=dataset.num_logical,
                       num_replicas=scenario.num_replicas, num_gpus=scenario.num_gpus, num_layers=2)
    assert report["policy"] == "hierarchical"
    assert groups_on_one_node(phy2log.numpy(), dataset.num_logical, scenario.num_groups, scenario.num_nodes).all()
    peak = peak_of(weight, phy2log, logcnt, scenario.num_gpus)
    for start in ("deepseek", "refined_packing"):
        other = get_algorithm(start)(weight, *arguments)
        assert bool((peak <= peak_of(weight, other[0], other[2], scenario.num_gpus) + 1e-9).all())


def test_groups_on_one_node_by_hand():
    # 4 experts in 2 groups ({0, 1}, {2, 3}), 2 nodes of 2 slots each.
    kept = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 2, 3]])
    split = np.array([[0, 2, 1, 3], [0, 1, 2, 1]])
    assert groups_on_one_node(kept, 4, 2, 2).tolist() == [True, True, True]   # row 3: expert 1 absent is fine
    assert groups_on_one_node(split, 4, 2, 2).tolist() == [False, False]
