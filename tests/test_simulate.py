"""Loads and metrics against hand-computed cases and a brute-force reference."""

import pytest
import torch

from eplb_bench.core.scoring import adrs, adrs_leaderboard, skydiscover
from eplb_bench.core.simulate import balancedness, gpu_loads, internode_share, node_loads, placement_metrics, slot_loads

# Layer 0: experts [6, 3, 1], expert 0 on slots 0 and 2. Layer 1: [0, 0, 8], expert 2 twice.
WEIGHT = torch.tensor([[6, 3, 1], [0, 0, 8]])
PHY2LOG = torch.tensor([[0, 1, 0, 2], [2, 2, 0, 1]])
LOGCNT = torch.tensor([[2, 1, 1], [1, 1, 2]])


def test_slot_gpu_node_loads_by_hand():
    slots = slot_loads(WEIGHT, PHY2LOG, LOGCNT)
    assert slots.tolist() == [[3.0, 3.0, 3.0, 1.0], [4.0, 4.0, 0.0, 0.0]]
    assert gpu_loads(slots, 2).tolist() == [[6.0, 4.0], [8.0, 0.0]]
    assert node_loads(slots, 1).tolist() == [[10.0], [8.0]]


def test_balancedness_sums_means_and_maxes_over_layers():
    gpu = gpu_loads(slot_loads(WEIGHT, PHY2LOG, LOGCNT), 2)
    # (5 + 4) / (6 + 8); the mean of per-layer ratios would be 0.667 instead.
    assert balancedness(gpu) == pytest.approx(9 / 14)


def test_slot_and_gpu_balancedness_differ():
    metrics = placement_metrics(torch.tensor([[8, 0, 0, 0]]), torch.tensor([[0, 1, 2, 3]]),
                                torch.ones(1, 4, dtype=torch.int64), num_gpus=2, num_nodes=1)
    assert metrics["balancedness_slot"] == pytest.approx(2 / 8)
    assert metrics["balancedness_gpu"] == pytest.approx(4 / 8)
    assert metrics["balancedness_node"] == pytest.approx(1.0)


def test_all_zero_load_is_balanced():
    assert balancedness(torch.zeros(3, 4, dtype=torch.float64)) == 1.0
    assert internode_share(torch.zeros(2, 3), PHY2LOG, LOGCNT, 2) == 0.0


def test_internode_share_by_hand():
    # One token's expert goes to node n with the share of load placed there; half the
    # sends are remote with two nodes. Layer 0 nodes carry 6 and 4, layer 1 8 and 0.
    assert internode_share(WEIGHT, PHY2LOG, LOGCNT, 2, top_k=1) == pytest.approx(0.5)
    # Two picks: layer 0 reaches (1 - 0.4^2) + (1 - 0.6^2) = 1.48 nodes, layer 1 one;
    # remote sends per pick 1.48 / 4 and 1 / 4, weighted by the layers' loads 10 and 8.
    assert internode_share(WEIGHT, PHY2LOG, LOGCNT, 2, top_k=2) == pytest.approx((0.37 * 10 + 0.25 * 8) / 18)
    assert internode_share(WEIGHT, PHY2LOG, LOGCNT, 1) == 0.0


def test_internode_share_credits_groups_kept_on_nodes():
    weight, logcnt = torch.ones(1, 4), torch.ones(1, 4, dtype=torch.int64)
    grouped, split = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 1, 3]])
    routing = dict(top_k=2, routing_groups=2, topk_groups=1)
    # Each group on its own node: one node per token, remote half the time: 0.5 / 2 picks.
    assert internode_share(weight, grouped, logcnt, 2, **routing) == pytest.approx(0.25)
    # Each group split over both nodes: 1.5 nodes per token.
    assert internode_share(weight, split, logcnt, 2, **routing) == pytest.approx(0.375)
    # Without group-limited routing both placements look alike.
    assert internode_share(weight, grouped, logcnt, 2, top_k=2) == internode_share(weight, split, logcnt, 2, top_k=2)


def brute_force(weight, phy2log, logcnt, num_gpus, num_nodes, top_k, groups, chosen):
    layers, replicas = phy2log.shape
    per_gpu = replicas // num_gpus
    per_node = replicas // num_nodes
    group_size = weight.shape[1] // groups
    sum_mean = sum_max = slot_mean = slot_max = 0.0
    remote = total = 0.0
    for layer in range(layers):
        slot = [float(weight[layer, phy2log[layer, s]]) / int(logcnt[layer, phy2log[layer, s]]) for s in range(replicas)]
        gpu = [sum(slot[g * per_gpu:(g + 1) * per_gpu]) for g in range(num_gpus)]
        sum_mean += sum(gpu) / num_gpus
        sum_max += max(gpu)
        slot_mean += sum(slot) / replicas
        slot_max += max(slot)
        layer_total = sum(slot)
        sends = 0.0
        for group in range(groups):
            on_node = [sum(slot[s] for s in range(n * per_node, (n + 1) * per_node)
                           if int(phy2log[layer, s]) // group_size == group) for n in range(num_nodes)]
            group_total = sum(on_node)
            if group_total:
                reached = sum(1 - (1 - x / group_total) ** (top_k / chosen) for x in on_node)
                sends += chosen * group_total / layer_total * reached
        remote += layer_total * sends * (num_nodes - 1) / num_nodes / top_k
        total += layer_total
    return sum_mean / sum_max, slot_mean / slot_max, remote / total


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    layers, experts, replicas, gpus, nodes = 3, 8, 12, 4, 2
    weight = torch.randint(1, 100, (layers, experts), generator=generator)
    extra = torch.randint(0, experts, (layers, replicas - experts), generator=generator)
    slots = torch.cat([torch.arange(experts).expand(layers, -1), extra], dim=1)
    phy2log = slots.gather(1, torch.argsort(torch.rand(layers, replicas, generator=generator), dim=1))
    logcnt = torch.zeros(layers, experts, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    routing = (6, 4, 2) if seed % 2 else (3, 1, 1)
    expected_gpu, expected_slot, expected_share = brute_force(weight, phy2log, logcnt, gpus, nodes, *routing)
    metrics = placement_metrics(weight, phy2log, logcnt, gpus, nodes)
    assert metrics["balancedness_gpu"] == pytest.approx(expected_gpu)
    assert metrics["balancedness_slot"] == pytest.approx(expected_slot)
    assert internode_share(weight, phy2log, logcnt, nodes, *routing) == pytest.approx(expected_share)


def test_scorers_by_hand():
    metrics = {"balancedness_slot": 0.3, "balancedness_gpu": 0.8}
    assert adrs(metrics, 0.1) == pytest.approx((0.3 + 0.2) / 2)
    assert skydiscover(metrics, 0.1) == pytest.approx((0.3 + 0.02) / 2)
    # t = 0.1 s: speed 5 * 0.02, penalty min(2, 20) = 2.
    assert adrs_leaderboard(metrics, 0.1) == pytest.approx(72 + 0.1 - 2)
    # t = 0.5 ms: speed capped at 2 (x5), no penalty under 10 ms.
    assert adrs_leaderboard(metrics, 0.0005) == pytest.approx(72 + 10)
    # t = 2 s: penalty capped at 20.
    assert adrs_leaderboard(metrics, 2.0) == pytest.approx(72 + 5 * 0.001 - 20)


def test_metrics_on_cuda_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = placement_metrics(WEIGHT, PHY2LOG, LOGCNT, 2, 2)
    cuda = placement_metrics(WEIGHT.cuda(), PHY2LOG.cuda(), LOGCNT.cuda(), 2, 2)
    assert cuda == pytest.approx(cpu)
