"""The modeled step time and migration cost, on cases computed by hand."""

from __future__ import annotations

import json

import pytest
import torch

from eplb_bench import load_dataset
from eplb_bench.core.costmodel import (
    CostModelError,
    ExpertShape,
    HardwareProfile,
    contiguous_placement,
    contiguous_step_seconds,
    load_profile,
    migration_seconds,
    profile_names,
    step_seconds,
)
from eplb_bench.data.catalog import shipped_names
from eplb_bench.data.models import expert_shape

# Round numbers: an expert of 3 x 10 x 10 one-byte weights (300 bytes, 600 FLOPs a token).
SHAPE = ExpertShape(hidden_size=10, intermediate_size=10, weight_bytes_per_param=1.0)
ROUND = {"name": "round", "description": "hand-computed", "gpus_per_node": 2, "flops_per_s": 1e12,
         "hbm_bytes_per_s": 1e12, "nvlink_bytes_per_s": 1e9, "network_bytes_per_s": 1e9,
         "dispatch_bytes_per_value": 1, "combine_bytes_per_value": 2, "latency_s": 0.0,
         "migration_bytes_per_s": 1e6, "overlap_share": 0.25}
PROFILE = HardwareProfile.from_dict(ROUND)
ONE_PICK = (1, 1, 1)   # top-1 routing, one group


def test_a_step_on_one_node_by_hand():
    # Slots 0, 1 on GPU 0 and 2, 3 on GPU 1; 4, 2, 1 and 0 pairs.
    load = torch.tensor([[4.0, 2.0, 1.0, 0.0]])
    phy2log, logcnt = torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4, dtype=torch.int64)
    parts = step_seconds(load, phy2log, logcnt, num_gpus=2, num_nodes=1, shape=SHAPE, profile=PROFILE,
                         routing=ONE_PICK)
    # Compute: slot 0 max(4 x 600 / 1e12, 300 / 1e12) = 2.4 ns, slot 1 1.2 ns; GPU 0 3.6 ns.
    assert parts["compute_s"] == pytest.approx(3.6e-9)
    # Dispatch: GPU 0 receives 6 pairs, half of them from the other GPU, 10 bytes each, at 1 GB/s.
    assert parts["dispatch_s"] == pytest.approx(3e-8)
    assert parts["combine_s"] == pytest.approx(6e-8)   # two bytes per value back
    assert parts["step_s"] == pytest.approx(3.6e-9 + 3e-8 + 6e-8)


def test_a_slot_with_few_tokens_pays_for_reading_its_weights():
    load = torch.tensor([[0.1, 0.0]])
    parts = step_seconds(load, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.int64), 2, 1, SHAPE,
                         HardwareProfile.from_dict({**ROUND, "hbm_bytes_per_s": 1e9}), ONE_PICK)
    assert parts["compute_s"] == pytest.approx(300 / 1e9)   # the weights, not 0.1 x 600 FLOPs


def test_the_network_carries_the_pairs_that_cross_nodes():
    # Two nodes of one GPU: with top-1 routing half of the pairs come from the other node.
    load = torch.tensor([[4.0, 2.0, 1.0, 0.0]])
    phy2log, logcnt = torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 4, dtype=torch.int64)
    slow = HardwareProfile.from_dict({**ROUND, "network_bytes_per_s": 1e8, "gpus_per_node": 1})
    parts = step_seconds(load, phy2log, logcnt, 2, 2, SHAPE, slow, ONE_PICK)
    assert parts["dispatch_s"] == pytest.approx(6 * 0.5 * 10 / 1e8)
    assert parts["combine_s"] == pytest.approx(6 * 0.5 * 20 / 1e8)


def test_latency_is_paid_twice_per_layer():
    load = torch.zeros(3, 4)
    profile = HardwareProfile.from_dict({**ROUND, "latency_s": 1e-5})
    parts = step_seconds(load, torch.arange(4).expand(3, -1), torch.ones(3, 4, dtype=torch.int64), 2, 1, SHAPE,
                         profile, ONE_PICK)
    assert parts["step_s"] == pytest.approx(6e-5) and parts["compute_s"] == 0.0


def test_replicas_split_an_experts_pairs():
    # Expert 0 has two replicas, one per GPU: 4 pairs become 2 + 2.
    load = torch.tensor([[4.0, 2.0, 2.0]])
    parts = step_seconds(load, torch.tensor([[0, 1, 0, 2]]), torch.tensor([[2, 1, 1]]), 2, 1, SHAPE, PROFILE,
                         ONE_PICK)
    assert parts["compute_s"] == pytest.approx(4 * 600 / 1e12)
    assert parts["dispatch_s"] == pytest.approx(4 * 0.5 * 10 / 1e9)


def test_the_contiguous_baseline_places_blocks_of_experts():
    gpu_of_expert, logcnt, per_gpu = contiguous_placement(2, 8, 4)
    assert gpu_of_expert[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and per_gpu == [2, 2, 2, 2]
    assert bool((logcnt == 1).all())
    gpu_of_expert, _, per_gpu = contiguous_placement(1, 256, 144)
    assert sum(per_gpu) == 256 and set(per_gpu) == {1, 2}
    assert bool((gpu_of_expert[0].diff() >= 0).all())


def test_the_baseline_is_the_identity_placement_where_that_exists():
    generator = torch.Generator().manual_seed(5)
    load = torch.rand(3, 16, generator=generator) * 100
    routing = (4, 4, 2)
    profile = HardwareProfile.from_dict({**ROUND, "gpus_per_node": 2})
    identity = step_seconds(load, torch.arange(16).expand(3, -1), torch.ones(3, 16, dtype=torch.int64), 4, 2, SHAPE,
                            profile, routing)
    baseline = contiguous_step_seconds(load, 4, 2, SHAPE, profile, routing)
    assert baseline == pytest.approx(identity)
    assert baseline["dispatch_s"] > 0


def test_migration_by_hand():
    # One slot per GPU; GPUs 0 and 1 on node 0, 2 and 3 on node 1.
    previous, new = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 0, 2, 0]])
    blocking = migration_seconds(new, previous, 4, 2, 4, SHAPE, PROFILE)
    # GPU 0 gets expert 1 and GPU 1 expert 0 from their node's other GPU (NVLink, 300 B at
    # 1 GB/s); GPU 3 gets expert 0, which node 1 never held (network, 300 B at 1 MB/s).
    assert blocking == {"moved_slots": 3, "received_experts": 3, "moved_bytes": 900.0,
                        "migration_s": pytest.approx(300 / 1e6)}
    overlapped = migration_seconds(new, previous, 4, 2, 4, SHAPE, PROFILE, overlapped=True)
    assert overlapped["migration_s"] == pytest.approx(0.75 * 300 / 1e6)
    assert migration_seconds(previous, previous, 4, 2, 4, SHAPE, PROFILE)["migration_s"] == 0.0


def test_a_migration_inside_a_node_runs_at_nvlink_speed():
    previous, new = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 1, 2, 3]])
    # GPU 0 receives expert 1 from GPU 1: 300 B at 1 GB/s.
    assert migration_seconds(new, previous, 4, 2, 4, SHAPE, PROFILE)["migration_s"] == pytest.approx(300 / 1e9)


def test_reordering_a_gpus_own_experts_and_a_second_copy_cost_nothing():
    # Two slots per GPU: GPU 0 swaps its slots, GPU 1 turns its expert 3 into a second copy of 2.
    previous, new = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 0, 2, 2]])
    cost = migration_seconds(new, previous, 2, 1, 4, SHAPE, PROFILE)
    assert cost == {"moved_slots": 3, "received_experts": 0, "moved_bytes": 0.0, "migration_s": 0.0}


def test_the_slowest_gpu_sets_the_migration_time():
    # GPU 2 receives two experts over the network, GPU 3 one: 600 B at 1 MB/s.
    previous = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    new = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 7]])
    cost = migration_seconds(new, previous, 4, 2, 8, SHAPE, PROFILE)
    assert cost["received_experts"] == 3 and cost["migration_s"] == pytest.approx(600 / 1e6)


def test_the_shipped_profiles_load_with_their_sources():
    assert {"h200-nvlink-ib400", "h800-deepep"} <= set(profile_names())
    for name in profile_names():
        profile = load_profile(name)
        assert profile.name == name and profile.sources and profile.gpus_per_node == 8


@pytest.mark.parametrize("change, message", [
    ({"bandwidth": 1}, "unknown field(s) bandwidth"),
    ({"flops_per_s": None}, "flops_per_s must be a finite number"),
    ({"nvlink_bytes_per_s": -1.0}, "nvlink_bytes_per_s must be a finite number >= 0"),
    ({"network_bytes_per_s": 0}, "must be positive"),
    ({"overlap_share": 1.5}, "overlap_share at most 1"),
    ({"name": 5}, "name must be a non-empty string"),
    ({"sources": 5}, "sources must be a list of strings"),
    ({"gpus_per_node": 2.5}, "gpus_per_node must be a positive integer"),
    ({"flops_per_s": 1e-320}, "are no hardware"),
    ({"latency_s": 1e308}, "are no hardware"),
])
def test_a_bad_profile_is_one_line(tmp_path, change, message):
    path = tmp_path / "mine.json"
    values = {**ROUND, **change}
    path.write_text(json.dumps(values))
    with pytest.raises(CostModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        load_profile(path)
    assert "\n" not in str(caught.value)


def test_a_missing_field_and_files_that_are_no_profile(tmp_path):
    missing = {key: value for key, value in ROUND.items() if key != "latency_s"}
    (tmp_path / "a.json").write_text(json.dumps(missing))
    with pytest.raises(CostModelError, match="missing latency_s"):
        load_profile(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(CostModelError, match="not JSON"):
        load_profile(tmp_path / "b.json")
    with pytest.raises(CostModelError, match="no hardware profile 'tpu'"):
        load_profile("tpu")


def test_every_shipped_dataset_has_an_expert_shape():
    for name in shipped_names():
        assert expert_shape(load_dataset(name).meta.get("model")).weight_bytes > 0
    # DeepSeek-V3: 3 x 7168 x 2048 FP8 weights, 44 MB an expert.
    assert expert_shape("DeepSeek-V3 / R1").weight_bytes == 3 * 7168 * 2048
    with pytest.raises(CostModelError, match="no expert shape for model 'GLM-9'"):
        expert_shape("GLM-9")
