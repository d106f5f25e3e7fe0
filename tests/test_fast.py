"""The `fast` balancer: exact counts, packing properties, policy, migration, devices."""

import itertools

import pytest
import torch

from eplb_bench import Scenario, get_algorithm, validate_placement
from eplb_bench_algorithms import fast as fast_module
from eplb_bench_algorithms.hybrid_replication import hybrid_replication

fast = get_algorithm("fast")


def sequential_divisor_counts(weight, num_slots, beta):
    """Brute force: hand out replicas one at a time to the highest weight / (c - beta)."""
    counts = [1] * len(weight)
    for _ in range(num_slots - len(weight)):
        best = max(range(len(weight)), key=lambda e: (weight[e] / (counts[e] - beta), -e))
        counts[best] += 1
    return counts


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_replica_priorities_match_one_at_a_time_allocation(beta, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.rand(6, 10, generator=generator, dtype=torch.float64) ** 3 * 100
    for num_slots in (10, 11, 13, 24, 57):
        counts = fast_module.top_replicas(weight, torch.ones_like(weight), num_slots - 10, beta, fresh=True)
        expected = [sequential_divisor_counts(row.tolist(), num_slots, beta) for row in weight]
        assert counts.tolist() == expected
        # From uneven counts too: grant 5 more on top of the allocation for num_slots.
        more = fast_module.top_replicas(weight, counts, 5, beta, fresh=False)
        assert more.tolist() == [sequential_from(row.tolist(), base, 5, beta) for row, base in zip(weight, expected)]


def test_a_single_grant_among_equal_priorities_goes_to_the_first_expert():
    weight = torch.tensor([[3.0, 5.0, 5.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    counts = fast_module.top_replicas(weight, torch.ones_like(weight), 1, 0.0, fresh=True)
    assert counts.tolist() == [[1, 2, 1, 1], [2, 1, 1, 1]]
    assert counts.tolist() == [sequential_divisor_counts(row.tolist(), 5, 0.0) for row in weight]


@pytest.mark.parametrize("bound", [2, 300, 2 ** 15, 2 ** 15 + 1, 10 ** 6])
def test_ascending_order_is_a_stable_sort(bound):
    generator = torch.Generator().manual_seed(bound)
    values = torch.randint(0, bound, (5, 40), generator=generator)
    values[:, ::3] = values[:, :1]  # ties
    expected = torch.sort(values, dim=-1, stable=True).indices
    assert torch.equal(fast_module.ascending_order(values, bound), expected)


@pytest.mark.parametrize("block", [1, 2, 3])
def test_rounds_deal_alike_on_numpy_and_on_torch(block):
    generator = torch.Generator().manual_seed(block)
    ranked = (torch.rand(6, 40, generator=generator) * 100).round().sort(-1, descending=True).values
    follows_copy = torch.rand(6, 4, generator=generator) < 0.5 if block == 1 else None
    on_torch = fast_module.deal_rounds(ranked, 8, block, follows_copy)
    on_numpy = fast_module.deal_rounds(ranked.numpy(), 8, block, None if follows_copy is None else follows_copy.numpy())
    assert torch.equal(on_torch, torch.from_numpy(on_numpy))
    assert on_torch.shape == (6, 5, 8)
    assert torch.equal(on_torch.sort(-1).values, torch.arange(8).expand(6, 5, 8))  # each round fills every bin once


def sequential_from(weight, counts, grants, beta):
    counts = list(counts)
    for _ in range(grants):
        best = max(range(len(weight)), key=lambda e: (weight[e] / (counts[e] - beta), -e))
        counts[best] += 1
    return counts


@pytest.mark.parametrize("num_slots", [16, 17, 40, 100])
def test_replica_counts_are_the_seeds(num_slots):
    generator = torch.Generator().manual_seed(num_slots)
    weight = torch.rand(8, 16, generator=generator, dtype=torch.float64) ** 2 * 50 + 1
    _, _, seed_counts = hybrid_replication(weight, num_slots)
    assert torch.equal(fast_module.replica_counts(weight, num_slots), seed_counts)


def brute_force_pairing(loads):
    """Smallest possible maximum of 2-item bins over all pairings of `loads`."""
    best = float("inf")
    for perm in itertools.permutations(range(len(loads))):
        pairs = [loads[perm[i]] + loads[perm[i + 1]] for i in range(0, len(loads), 2)]
        best = min(best, max(pairs))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_sorted_rounds_pair_optimally_with_two_items_per_bin(seed):
    loads = torch.rand(1, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    positions = fast_module.pack_in_rounds(loads, 4)
    peak = loads.gather(1, positions).view(4, 2).sum(-1).max()
    assert float(peak) == pytest.approx(brute_force_pairing(loads[0].tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_swaps_never_raise_the_peak_and_keep_the_items(seed):
    generator = torch.Generator().manual_seed(seed)
    loads = torch.rand(7, 24, generator=generator, dtype=torch.float64) ** 4
    positions = fast_module.pack_in_rounds(loads, 4)
    placed = loads.gather(1, positions)
    before = placed.view(7, 4, 6).sum(-1).max(-1).values
    refined = fast_module.refine_by_swaps(loads, positions, 4, rounds=20)
    after = loads.gather(1, refined).view(7, 4, 6).sum(-1).max(-1).values
    assert (after <= before + 1e-12).all()
    assert torch.equal(refined.sort(-1).values, torch.arange(24).expand(7, -1))


SCENARIOS = [
    Scenario(16, 4, 2, 4),   # hierarchical
    Scenario(18, 4, 3, 6),   # groups do not divide nodes: global
    Scenario(8, 1, 1, 4),    # no redundancy
    Scenario(12, 1, 1, 12),  # one slot per GPU
    Scenario(40, 8, 4, 8),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.label())
def test_valid_and_deterministic(scenario):
    generator = torch.Generator().manual_seed(1)
    weight = (torch.rand(5, 8, generator=generator) ** 4 * 1000).round()
    weight[2] = 0  # an idle layer
    weight[3, :4] = 0
    first = fast(weight, scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
    validate_placement(*first, num_logical=8, num_replicas=scenario.num_replicas, num_gpus=scenario.num_gpus,
                       num_layers=5)
    second = fast(weight, scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_better_than_deepseek_in_sample_on_random_loads_with_redundancy():
    deepseek = get_algorithm("deepseek")
    generator = torch.Generator().manual_seed(5)
    weight = (torch.rand(20, 32, generator=generator) ** 3 * 1000).round() + 1
    for R, G, N, P in [(48, 1, 1, 8), (40, 1, 1, 8), (48, 4, 2, 8)]:
        peaks = []
        for balancer in (fast, deepseek):
            phy2log, _, logcnt = balancer(weight, R, G, N, P)
            peaks.append(fast_module.peak_gpu_load(weight.double(), phy2log, logcnt, P))
        assert float(peaks[0].sum()) <= float(peaks[1].sum()) + 1e-9


def test_policy_keeps_balanced_groups_on_nodes_and_spreads_a_dominant_group():
    # Layer 0: four groups of equal load. Layer 1: group 0 carries most of the load.
    weight = torch.ones(2, 16, dtype=torch.float64)
    weight[1, :4] = 40.0
    nodemajor, local = fast_module.experts_to_nodes(weight, 4, 2, locality_tolerance=0.05)
    assert local.tolist() == [True, False]
    groups_on_node = nodemajor[0].view(2, 8) // 4
    assert all(len(set(row.tolist())) == 2 for row in groups_on_node)
    heavy_per_node = (nodemajor[1].view(2, 8) < 4).sum(-1)
    assert heavy_per_node.tolist() == [2, 2]
    # The spread layer is far better balanced than whole groups on nodes can be.
    phy2log, _, logcnt = fast(weight, 32, 4, 2, 4)
    spread_peak = float(fast_module.peak_gpu_load(weight, phy2log, logcnt, 4)[1])
    kept, _, kept_cnt = fast(weight, 32, 4, 2, 4, locality_tolerance=100.0)
    kept_peak = float(fast_module.peak_gpu_load(weight, kept, kept_cnt, 4)[1])
    assert spread_peak < 0.7 * kept_peak


def test_keep_slots_leaves_staying_experts_in_place():
    generator = torch.Generator().manual_seed(2)
    for trial in range(40):
        # Expert numbers past 2**15 / 3 take the packed-key sort on the CPU.
        offset = 0 if trial % 2 else 20_000
        old = torch.randint(0, 5, (3, 12), generator=generator) + offset
        new = torch.randint(0, 5, (3, 12), generator=generator) + offset
        kept = fast_module.keep_slots(new, old, num_logical=offset + 5, num_gpus=3)
        for gpu in range(3):
            block = slice(4 * gpu, 4 * gpu + 4)
            assert torch.equal(kept[:, block].sort(-1).values, new[:, block].sort(-1).values)
            for layer in range(3):
                # As many slots keep their expert as the two multisets have in common.
                common = sum(min(new[layer, block].tolist().count(e), old[layer, block].tolist().count(e))
                             for e in range(offset, offset + 5))
                assert int((kept[layer, block] == old[layer, block]).sum()) == common


def moved(a, b):
    return int((a != b).sum())


@pytest.mark.parametrize("args", [(24, 4, 2, 8), (24, 1, 1, 8), (32, 4, 4, 16)], ids=str)
def test_previous_placement_and_the_migration_knob(args):
    generator = torch.Generator().manual_seed(4)
    weight = (torch.rand(6, 16, generator=generator) ** 3 * 1000).round() + 1
    num_gpus = args[3]
    phy2log, _, logcnt = fast(weight, *args)
    # Given its own placement back on the same loads, nothing moves.
    assert torch.equal(fast(weight, *args, prev_phy2log=phy2log)[0], phy2log)
    shifted = weight.roll(3, dims=-1) * (1 + torch.rand(6, 16, generator=generator))
    peak = lambda out: fast_module.peak_gpu_load(shifted.double(), out[0], out[2], num_gpus)
    fresh = fast(shifted, *args)
    # By default only numbering changes: the same loads per GPU, fewer moves.
    aware = fast(shifted, *args, prev_phy2log=phy2log)
    validate_placement(*aware, num_logical=16, num_replicas=args[0], num_gpus=num_gpus, num_layers=6)
    assert torch.allclose(peak(aware), peak(fresh))
    assert moved(aware[0], phy2log) <= moved(fresh[0], phy2log)
    # The knob: each layer's peak within the tolerance of the new placement's, fewer moves.
    for tolerance in (0.0, 0.05, 0.2):
        traded = fast(shifted, *args, prev_phy2log=phy2log, migration_tolerance=tolerance)
        validate_placement(*traded, num_logical=16, num_replicas=args[0], num_gpus=num_gpus, num_layers=6)
        assert (peak(traded) <= (1 + tolerance) * peak(fresh) + 1e-6).all()
        assert moved(traded[0], phy2log) <= moved(aware[0], phy2log)
    # A tolerance no layer can exceed keeps the previous placement wherever the policy allows it.
    kept = fast(shifted, *args, prev_phy2log=phy2log, migration_tolerance=100.0)
    if args[1] % args[2] or args[2] == 1:
        assert torch.equal(kept[0], phy2log)


def test_a_malformed_previous_placement_is_a_clear_error():
    weight = torch.ones(2, 8)
    with pytest.raises(ValueError, match="prev_phy2log must be"):
        fast(weight, 8, 1, 1, 4, prev_phy2log=torch.zeros(2, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="prev_phy2log must be"):
        fast(weight, 8, 1, 1, 4, prev_phy2log=torch.full((2, 8), 9))


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    weight = (torch.rand(4, 16, generator=torch.Generator().manual_seed(0)) * 100).round()
    cpu = fast(weight, 24, 4, 2, 8)
    cuda = fast(weight.cuda(), 24, 4, 2, 8)
    assert all(t.device.type == "cuda" for t in cuda)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))


@pytest.mark.parametrize("seed", range(30))
def test_the_migration_knob_always_returns_valid_placements(seed):
    generator = torch.Generator().manual_seed(seed)
    args = [(6, 4, 2, 2), (16, 4, 2, 4), (24, 8, 4, 8), (12, 1, 1, 4), (18, 4, 3, 6)][seed % 5]
    first = (torch.rand(3, 8 if args[0] > 6 else 4, generator=generator) ** 3 * 100).round()
    second = (torch.rand(first.shape, generator=generator) ** 3 * 100).round()
    prev = fast(first, *args)[0]
    for tolerance in (None, 0.0, 0.05, 10.0):
        out = fast(second, *args, prev_phy2log=prev, migration_tolerance=tolerance)
        validate_placement(*out, num_logical=first.shape[1], num_replicas=args[0], num_gpus=args[3], num_layers=3)


def test_previous_placements_with_missing_experts_or_odd_layout_are_handled():
    weight = (torch.rand(4, 32, generator=torch.Generator().manual_seed(1)) * 100).round()
    prev = fast(weight, 40, 8, 4, 8)[0]
    holey = prev.clone()
    holey[holey == 5] = 6  # expert 5 has no replica in service
    out = fast(weight.roll(1, -1), 40, 8, 4, 8, prev_phy2log=holey, migration_tolerance=0.05)
    validate_placement(*out, num_logical=32, num_replicas=40, num_gpus=8, num_layers=4)
    strided = prev.t().contiguous().t()
    assert torch.equal(fast(weight, 40, 8, 4, 8, prev_phy2log=strided)[0], fast(weight, 40, 8, 4, 8, prev_phy2log=prev)[0])
    with pytest.raises(ValueError, match="integer expert indices"):
        fast(weight, 40, 8, 4, 8, prev_phy2log=prev.float() + 0.5)


def test_an_unchanged_placement_keeps_every_slot():
    weight = torch.tensor([[16.0, 16.0, 7.0]])
    placement = fast(weight, 12, 1, 1, 4)[0]
    assert torch.equal(fast(weight, 12, 1, 1, 4, prev_phy2log=placement)[0], placement)


def test_negative_zero_weighs_nothing():
    positive = fast(torch.tensor([[0.0, 100.0, 50.0, 10.0]]), 8, 1, 1, 4)
    negative = fast(torch.tensor([[-0.0, 100.0, 50.0, 10.0]]), 8, 1, 1, 4)
    assert all(torch.equal(a, b) for a, b in zip(positive, negative))
