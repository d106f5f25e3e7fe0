"""Loads and metrics against hand-computed cases and a brute-force reference."""

import pytest
import torch

from eplb_bench.scoring import adrs, adrs_leaderboard, skydiscover
from eplb_bench.simulate import (
    balancedness,
    gpu_loads,
    internode_share,
    node_loads,
    placement_metrics,
    slot_loads,
)

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
    assert internode_share(torch.zeros(2, 3), PHY2LOG, 2) == 0.0


def test_internode_share_by_hand():
    # Layer 0, nodes {0,1} and {0,2}: expert 1 (3) and 2 (1) are on one node, half their
    # tokens cross: 2. Layer 1, nodes {2} and {0,1}: expert 2 (8) crosses half: 4. Of 18.
    assert internode_share(WEIGHT, PHY2LOG, 2) == pytest.approx(6 / 18)
    assert internode_share(WEIGHT, PHY2LOG, 1) == 0.0


def brute_force(weight, phy2log, logcnt, num_gpus, num_nodes):
    layers, replicas = phy2log.shape
    per_gpu = replicas // num_gpus
    gpus_per_node = num_gpus // num_nodes
    sum_mean = sum_max = slot_mean = slot_max = 0.0
    crossing = total = 0.0
    for layer in range(layers):
        slot = [float(weight[layer, phy2log[layer, s]]) / int(logcnt[layer, phy2log[layer, s]]) for s in range(replicas)]
        gpu = [sum(slot[g * per_gpu:(g + 1) * per_gpu]) for g in range(num_gpus)]
        sum_mean += sum(gpu) / num_gpus
        sum_max += max(gpu)
        slot_mean += sum(slot) / replicas
        slot_max += max(slot)
        for expert in range(weight.shape[1]):
            nodes = {(s // per_gpu) // gpus_per_node for s in range(replicas) if phy2log[layer, s] == expert}
            crossing += float(weight[layer, expert]) * (num_nodes - len(nodes)) / num_nodes
            total += float(weight[layer, expert])
    return sum_mean / sum_max, slot_mean / slot_max, crossing / total


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    layers, experts, replicas, gpus, nodes = 3, 8, 12, 4, 2
    weight = torch.randint(0, 100, (layers, experts), generator=generator)
    extra = torch.randint(0, experts, (layers, replicas - experts), generator=generator)
    slots = torch.cat([torch.arange(experts).expand(layers, -1), extra], dim=1)
    phy2log = slots.gather(1, torch.argsort(torch.rand(layers, replicas, generator=generator), dim=1))
    logcnt = torch.zeros(layers, experts, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    expected_gpu, expected_slot, expected_share = brute_force(weight, phy2log, logcnt, gpus, nodes)
    metrics = placement_metrics(weight, phy2log, logcnt, gpus, nodes)
    assert metrics["balancedness_gpu"] == pytest.approx(expected_gpu)
    assert metrics["balancedness_slot"] == pytest.approx(expected_slot)
    assert internode_share(weight, phy2log, nodes) == pytest.approx(expected_share)


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
