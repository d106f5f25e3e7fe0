"""The registry's balancers: the golden example, validity everywhere, the seed's steps."""

import pytest
import torch

from eplb_bench_algorithms._hierarchy import greedy_packing, greedy_replication, scan_packing
from eplb_bench_algorithms.hybrid_replication import _fix_up, hybrid_replication
from eplb_bench_algorithms.refined_packing import refined_packing
from eplb_bench import Scenario, get_algorithm, list_algorithms, load_dataset, validate_placement
from eplb_bench.data.catalog import shipped_names
from conftest import GOLDEN_PHY2LOG

SEED_FAMILY = ["deepseek", "refined_packing", "hybrid_replication", "seed"]


def test_seed_family_is_registered():
    assert set(SEED_FAMILY) <= set(list_algorithms())


def test_deepseek_reproduces_golden_example(golden_weight):
    phy2log, log2phy, logcnt = get_algorithm("deepseek")(golden_weight, 16, 4, 2, 8)
    assert phy2log.tolist() == GOLDEN_PHY2LOG
    assert logcnt.tolist() == [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1], [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]
    validate_placement(phy2log, log2phy, logcnt, num_logical=12, num_replicas=16, num_gpus=8)


def run_valid(name, weight, scenario):
    original = weight.clone()
    phy2log, log2phy, logcnt = get_algorithm(name)(weight, *scenario.as_dict().values())
    assert torch.equal(weight, original), f"{name} modified its input"
    validate_placement(phy2log, log2phy, logcnt, num_logical=weight.shape[1],
                       num_replicas=scenario.num_replicas, num_gpus=scenario.num_gpus)
    return phy2log, logcnt


@pytest.mark.parametrize("name", list_algorithms(include_slow=False))
@pytest.mark.parametrize("dataset", shipped_names())
def test_valid_on_every_shipped_dataset(name, dataset):
    data = load_dataset(dataset)
    for scenario in data.scenarios:
        run_valid(name, data.windows[0], scenario)


EDGE_CASES = {
    "all zero": (torch.zeros(3, 16, dtype=torch.int64), Scenario(24, 4, 2, 8)),
    "one dominant expert": (torch.nn.functional.one_hot(torch.tensor([3, 0, 15]), 16) * 10_000, Scenario(24, 4, 2, 8)),
    "no redundant slots": (torch.arange(48).view(3, 16) % 7 + 1, Scenario(16, 4, 2, 8)),
    "one slot per gpu": (torch.arange(48).view(3, 16) % 5, Scenario(16, 4, 2, 16)),
    "global policy": (torch.arange(48).view(3, 16) % 11, Scenario(24, 4, 3, 6)),
    "float weights": (torch.rand(3, 16, generator=torch.Generator().manual_seed(1)), Scenario(32, 4, 2, 8)),
    "one layer one gpu": (torch.tensor([[5, 1, 1, 1]]), Scenario(8, 1, 1, 1)),
}


@pytest.mark.parametrize("name", list_algorithms(include_slow=False))
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_valid_on_edge_cases(name, case):
    weight, scenario = EDGE_CASES[case]
    run_valid(name, weight, scenario)


@pytest.mark.parametrize("name", SEED_FAMILY)
def test_deterministic(name, golden_weight):
    first = get_algorithm(name)(golden_weight, 16, 4, 2, 8)
    second = get_algorithm(name)(golden_weight, 16, 4, 2, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_dominant_expert_gets_every_spare_slot():
    weight = torch.tensor([[1000, 1, 1, 1, 1, 1, 1, 1]])
    _, logcnt = run_valid("deepseek", weight, Scenario(16, 1, 1, 4))
    assert logcnt.tolist() == [[9, 1, 1, 1, 1, 1, 1, 1]]


def pack_loads(weight, pack_index, num_packs):
    return torch.zeros(weight.shape[0], num_packs, dtype=torch.float64).scatter_add_(1, pack_index, weight.double())


def test_refinement_swap_by_hand():
    weight = torch.tensor([[8.0, 7, 6, 5, 4, 1]])
    greedy, _ = greedy_packing(weight, 2)
    assert sorted(pack_loads(weight, greedy, 2)[0].tolist()) == [14.0, 17.0]
    refined, rank = refined_packing(weight, 2, refine_steps=1)
    # 8 and 7 trade places: {7, 5, 4} = 16 and {8, 6, 1} = 15, the optimum.
    assert sorted(pack_loads(weight, refined, 2)[0].tolist()) == [15.0, 16.0]
    assert refined[0, 0] != refined[0, 3] and refined[0, 1] == refined[0, 3]
    for pack in range(2):
        assert sorted(rank[0][refined[0] == pack].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(10))
def test_refinement_never_raises_the_heaviest_pack(seed):
    weight = torch.rand(6, 24, generator=torch.Generator().manual_seed(seed)) ** 3
    greedy, _ = greedy_packing(weight, 4)
    refined, rank = refined_packing(weight, 4, refine_steps=2)
    before = pack_loads(weight, greedy, 4).max(-1).values
    after = pack_loads(weight, refined, 4).max(-1).values
    assert (after <= before + 1e-9).all()
    assert (torch.bincount(refined.flatten() + 4 * torch.arange(6).repeat_interleave(24)) == 6).all()
    # ranks stay a permutation 0..5 inside every pack
    code = refined * 6 + rank
    assert all(sorted(row.tolist()) == list(range(24)) for row in code)


def test_hybrid_tail_uses_sainte_lague():
    weight = torch.tensor([[12.0, 5.0]])
    # Two spare slots: D'Hondt gives both to expert 0 (12/2 = 6 > 5); the tenth that
    # goes by Sainte-Lague (12/3 = 4 < 5) gives the second to expert 1.
    assert greedy_replication(weight, 4)[2].tolist() == [[3, 1]]
    phy2log, rank, logcnt = hybrid_replication(weight, 4)
    assert logcnt.tolist() == [[2, 2]]
    assert phy2log.tolist() == [[0, 1, 0, 1]] and rank.tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_hybrid_fix_up_never_fires_on_positive_loads(seed):
    # Taking a replica from the expert of highest per-replica load raises that load.
    weight = torch.rand(8, 16, generator=torch.Generator().manual_seed(seed)) + 0.01
    phy2log, rank, logcnt = greedy_replication(weight, 40)
    before = (phy2log.clone(), rank.clone(), logcnt.clone())
    _fix_up(weight, phy2log, rank, logcnt)
    assert all(torch.equal(a, b) for a, b in zip(before, (phy2log, rank, logcnt)))


def test_seed_variants_match_deepseek_where_nothing_changes(golden_weight):
    # Two spare slots per node: no Sainte-Lague divergence, no profitable swap.
    reference = get_algorithm("deepseek")(golden_weight, 16, 4, 2, 8)[0]
    for name in ["refined_packing", "hybrid_replication", "seed"]:
        assert get_algorithm(name)(golden_weight, 16, 4, 2, 8)[0].tolist() == reference.tolist()


def test_cuda_input_gives_valid_placement(golden_weight):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for name in list_algorithms(include_slow=False):
        phy2log, log2phy, logcnt = get_algorithm(name)(golden_weight.cuda(), 16, 4, 2, 8)
        assert phy2log.device.type == "cuda"
        validate_placement(phy2log, log2phy, logcnt, num_logical=12, num_replicas=16, num_gpus=8)


def max_gpu_load(name, weight, scenario):
    phy2log, _, logcnt = get_algorithm(name)(weight, *scenario.as_dict().values())
    slots = (weight.double() / logcnt).gather(1, phy2log)
    return slots.view(weight.shape[0], scenario.num_gpus, -1).sum(-1).max().item(), logcnt


def test_registered_refinement_changes_the_gpu_packing():
    weight = torch.tensor([[8, 7, 6, 5, 4, 1]])
    scenario = Scenario(6, 1, 1, 2)  # no spare slot: only the packing differs
    assert max_gpu_load("deepseek", weight, scenario)[0] == 17.0
    assert max_gpu_load("hybrid_replication", weight, scenario)[0] == 17.0
    assert max_gpu_load("refined_packing", weight, scenario)[0] == 16.0
    assert max_gpu_load("seed", weight, scenario)[0] == 16.0


def test_registered_hybrid_replication_changes_the_counts():
    weight = torch.tensor([[12, 5]])
    scenario = Scenario(4, 1, 1, 2)
    assert max_gpu_load("deepseek", weight, scenario)[1].tolist() == [[3, 1]]
    assert max_gpu_load("refined_packing", weight, scenario)[1].tolist() == [[3, 1]]
    assert max_gpu_load("hybrid_replication", weight, scenario)[1].tolist() == [[2, 2]]
    assert max_gpu_load("seed", weight, scenario)[1].tolist() == [[2, 2]]


@pytest.mark.parametrize("seed", range(20))
def test_heap_packing_makes_the_same_choices_as_the_reference_scan(seed):
    generator = torch.Generator().manual_seed(seed)
    packs, capacity = int(torch.randint(2, 12, (1,), generator=generator)), int(torch.randint(2, 6, (1,), generator=generator))
    weight = torch.randint(0, 5, (4, packs * capacity), generator=generator).float()  # many ties
    if seed % 2:
        weight = torch.rand(4, packs * capacity, generator=generator)
    expected = scan_packing(weight, packs)
    actual = greedy_packing(weight, packs)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
