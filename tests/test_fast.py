"""The `fast` balancer: exact counts, packing properties, policy, migration, devices."""

import itertools

import pytest
import torch

from eplb_bench import Scenario, get_algorithm, validate_placement
from eplb_bench_algorithms import fast as fast_module

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


def greedy_rounds(ranked, num_bins):
    """Brute force: round by round, the i-th heaviest item of the round to the i-th
    lightest bin (ties by bin index); returns each bin's items."""
    bins = [[item] for item in range(num_bins)]
    load = [ranked[item] for item in range(num_bins)]
    for start in range(num_bins, len(ranked), num_bins):
        lightest = sorted(range(num_bins), key=lambda b: (load[b], b))
        for offset, bin_index in enumerate(lightest):
            bins[bin_index].append(start + offset)
            load[bin_index] += ranked[start + offset]
    return bins


@pytest.mark.parametrize("num_bins", [2, 8, 40])
def test_sorted_rounds_match_the_greedy_round_by_round(num_bins):
    generator = torch.Generator().manual_seed(num_bins)
    ranked = (torch.rand(6, num_bins * 5, generator=generator) * 100).round().sort(-1, descending=True).values
    position_item = fast_module.deal_sorted(ranked, num_bins)
    for row in range(6):
        expected = greedy_rounds(ranked[row].tolist(), num_bins)
        assert position_item[row].view(num_bins, 5).tolist() == expected


def sequential_from(weight, counts, grants, beta):
    counts = list(counts)
    for _ in range(grants):
        best = max(range(len(weight)), key=lambda e: (weight[e] / (counts[e] - beta), -e))
        counts[best] += 1
    return counts


def sainte_lague_or_dhondt(weight, num_slots, num_bins):
    """Brute force of the replica rule: Sainte-Laguë one replica at a time, unless its
    heaviest replica lifts max(mean bin load, heaviest replica) above D'Hondt's."""
    sainte_lague = sequential_divisor_counts(weight, num_slots, 0.5)
    dhondt = sequential_divisor_counts(weight, num_slots, 0.0)
    mean_bin = sum(weight) / num_bins

    def floor(counts):
        return max(mean_bin, max(w / c for w, c in zip(weight, counts)))
    return sainte_lague if floor(sainte_lague) <= floor(dhondt) else dhondt


@pytest.mark.parametrize("num_slots", [16, 24, 40, 96])
def test_replica_counts_follow_the_rule_one_replica_at_a_time(num_slots):
    generator = torch.Generator().manual_seed(num_slots)
    weight = torch.rand(12, 16, generator=generator, dtype=torch.float64) ** 4 * 50 + 1
    weight[:4, 0] = 400.0  # one dominant expert: D'Hondt where Sainte-Laguë would leave it heavy
    for num_bins in (2, 4, 8):
        if num_slots % num_bins:
            continue
        counts = fast_module.replica_counts(weight, num_slots, num_bins)
        expected = [sainte_lague_or_dhondt(row.tolist(), num_slots, num_bins) for row in weight]
        assert counts.tolist() == expected


def test_replica_rule_by_hand():
    # Two extra replicas. Sainte-Laguë: 6 / 0.5 = 12 to expert 0, then 2.9 / 0.5 = 5.8
    # beats 6 / 1.5 = 4: counts 2, 2; heaviest replica 3.0. D'Hondt: 6, then 6 / 2 = 3
    # beats 2.9: counts 3, 1; heaviest replica 2.9.
    weight = torch.tensor([[6.0, 2.9, 2.9, 2.0, 1.0, 1.0, 1.0, 1.0]])
    # 5 bins: the mean bin load 3.56 is above both heaviest replicas; Sainte-Laguë stays.
    assert fast_module.replica_counts(weight, 10, 5).tolist() == [[2, 2, 1, 1, 1, 1, 1, 1]]
    # 10 bins: mean 1.78; Sainte-Laguë's 3.0 would lift the floor above D'Hondt's 2.9.
    assert fast_module.replica_counts(weight, 10, 10).tolist() == [[3, 1, 1, 1, 1, 1, 1, 1]]


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
    heaviest_first = fast_module.descending_order(loads)
    positions = heaviest_first.gather(1, fast_module.deal_sorted(loads.gather(1, heaviest_first), 4))
    peak = loads.gather(1, positions).view(4, 2).sum(-1).max()
    assert float(peak) == pytest.approx(brute_force_pairing(loads[0].tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_swaps_never_raise_the_peak_and_keep_the_items(seed):
    generator = torch.Generator().manual_seed(seed)
    loads = torch.rand(7, 24, generator=generator, dtype=torch.float64) ** 4
    heaviest_first = fast_module.descending_order(loads)
    positions = heaviest_first.gather(1, fast_module.deal_sorted(loads.gather(1, heaviest_first), 4))
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
    nodemajor, local = fast_module.groups_to_nodes(weight, 4, 2, locality_tolerance=0.05)
    assert local.tolist() == [True, False]
    groups_on_node = nodemajor[0].view(2, 8) // 4
    assert all(len(set(row.tolist())) == 2 for row in groups_on_node)
    # The spread layer is placed over all GPUs: the heavy group's replicas reach both nodes.
    phy2log, _, logcnt = fast(weight, 32, 4, 2, 4)
    heavy_per_node = (phy2log[1].view(2, 16) < 4).sum(-1)
    assert heavy_per_node.min() >= 4
    # It is far better balanced than whole groups on nodes can be.
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



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fast", "fast_spread"])
def test_a_cuda_call_never_waits_for_the_device(name):
    weight = (torch.rand(6, 64, device="cuda") ** 3 * 1000).round()
    balancer = get_algorithm(name)
    for scenario in (Scenario(80, 8, 2, 8), Scenario(80, 1, 1, 16), Scenario(64, 1, 1, 8)):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            output = balancer(weight, scenario.num_replicas, scenario.num_groups, scenario.num_nodes, scenario.num_gpus)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        validate_placement(*(t.cpu() for t in output), num_logical=64, num_replicas=scenario.num_replicas,
                           num_gpus=scenario.num_gpus, num_layers=6)

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
    assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[2], cuda[2].cpu())
    # On CUDA log2phy is R - E + 1 wide (no wait for logcnt.max()); past the CPU's width it is padding.
    width = cpu[1].shape[2]
    assert torch.equal(cpu[1], cuda[1][:, :, :width].cpu()) and bool((cuda[1][:, :, width:] == -1).all())


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


STANDARD_SHAPES = [  # (layers, experts, replicas, groups, nodes, gpus), as the shipped scenarios have them
    (6, 256, 288, 8, 4, 32), (6, 256, 288, 8, 18, 144), (6, 128, 136, 1, 1, 8), (6, 384, 480, 1, 12, 96),
    (6, 8, 16, 1, 1, 8), (6, 128, 144, 1, 2, 16), (6, 128, 128, 1, 1, 8), (6, 64, 288, 8, 4, 32)]


@pytest.mark.parametrize("shape", STANDARD_SHAPES)
@pytest.mark.parametrize("spread", [False, True])
def test_the_torch_code_path_plans_as_the_numpy_one(shape, spread, monkeypatch):
    """A CPU call plans on NumPy arrays; a CUDA call runs the same functions on torch
    tensors, computing both policies and choosing per layer. Run that torch path
    here on CPU tensors, as a CUDA device would, and compare."""
    layers, experts, replicas, groups, nodes, gpus = shape
    generator = torch.Generator().manual_seed(sum(shape))
    weight = (torch.rand(layers, experts, generator=generator) ** 4 * 1000).round()
    weight[0, : experts // 2] = 0.0                                   # a half-idle layer
    weight[1] = 0.0                                                   # an idle layer
    weight[2, 0] = 1e6                                                # one dominant expert
    args = (replicas, groups, nodes, gpus, fast_module.SPREAD_ALWAYS if spread else fast_module.LOCALITY_TOLERANCE,
            fast_module.REFINE_ROUNDS, fast_module.NODE_REFINE_ROUNDS)
    planned = fast_module.plan_layers(weight.numpy().copy(), *args)
    monkeypatch.setattr(fast_module, "waits_for_device", lambda a: isinstance(a, torch.Tensor))
    planned_torch = fast_module.plan_layers(weight.clone(), *args)
    assert all(isinstance(a, torch.Tensor) for a in planned_torch)
    for numpy_part, torch_part in zip(planned, planned_torch):
        assert torch.equal(torch.from_numpy(numpy_part), torch_part)


def test_a_cpu_call_returns_int64_tensors_apart_from_its_input():
    weight = (torch.rand(4, 64) * 100).round()
    before = weight.clone()
    phy2log, log2phy, logcnt = fast(weight, 72, 4, 2, 8)
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in (phy2log, log2phy, logcnt))
    assert torch.equal(weight, before)
    phy2log[:] = 0
    assert torch.equal(weight, before)
