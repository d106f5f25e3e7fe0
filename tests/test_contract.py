"""validate_placement: accepts every valid form, rejects each violation with its message."""

import re

import pytest
import torch

from eplb_bench import PlacementError, Scenario, ScenarioError, validate_placement

# Two layers, 3 logical experts, 4 slots on 2 GPUs. Layer 0: expert 0 twice.
PHY2LOG = [[0, 1, 0, 2], [2, 2, 1, 0]]
LOGCNT = [[2, 1, 1], [1, 1, 2]]
LOG2PHY = [[[0, 2], [1, -1], [3, -1]], [[3, -1], [2, -1], [0, 1]]]


def triple():
    return torch.tensor(PHY2LOG), torch.tensor(LOG2PHY), torch.tensor(LOGCNT)


def check(phy2log, log2phy, logcnt, **overrides):
    sizes = dict(num_logical=3, num_replicas=4, num_gpus=2)
    sizes.update(overrides)
    validate_placement(phy2log, log2phy, logcnt, **sizes)


def test_valid_triple_passes():
    check(*triple())


def test_wider_log2phy_padding_is_accepted():
    phy2log, log2phy, logcnt = triple()
    wide = torch.full((2, 3, 4), -1, dtype=torch.int64)  # vLLM's width, num_replicas - num_logical + 1 = 2, or more
    wide[:, :, :2] = log2phy
    check(phy2log, wide, logcnt)


def test_slot_order_inside_an_expert_is_free():
    phy2log, log2phy, logcnt = triple()
    log2phy[0, 0] = torch.tensor([2, 0])
    check(phy2log, log2phy, logcnt)


def mutated(change):
    phy2log, log2phy, logcnt = triple()
    change(phy2log, log2phy, logcnt)
    return phy2log, log2phy, logcnt


BROKEN = [
    ("not a tensor", None, lambda t: (t[0].tolist(), t[1], t[2]), "phy2log is a list"),
    ("wrong dtype", None, lambda t: (t[0].int(), t[1], t[2]), "phy2log has dtype torch.int32"),
    ("wrong ndim", None, lambda t: (t[0], t[1][:, :, 0], t[2]), "log2phy has shape (2, 3), expected 3 dimensions"),
    ("wrong shape", None, lambda t: (t[0][:, :3], t[1], t[2]), "phy2log has shape (2, 3), expected (2, 4)"),
    ("logcnt shape", None, lambda t: (t[0], t[1], t[2][:, :2]), "logcnt has shape (2, 2), expected (2, 3)"),
    ("phy2log range", lambda p, l, c: p.__setitem__((1, 2), 3), None, "phy2log[1, 2] = 3 is out of range [0, 3)"),
    ("log2phy range", lambda p, l, c: l.__setitem__((0, 1, 0), 4), None, "log2phy[0, 1, 0] = 4 is out of range"),
    ("bad padding value", lambda p, l, c: l.__setitem__((0, 1, 1), -2), None, "log2phy[0, 1, 1] = -2 is out of range"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[case[0] for case in BROKEN])
def test_malformed_outputs_are_named(case):
    _, change, transform, message = case
    values = mutated(change) if change else transform(triple())
    with pytest.raises(PlacementError, match=re.escape(message)):
        check(*values)


def test_expert_without_replica():
    # Layer 1: expert 1's slot given to expert 2; logcnt updated consistently.
    phy2log, log2phy, logcnt = triple()
    phy2log[1, 2] = 2
    with pytest.raises(PlacementError, match="logical expert 1 of layer 1 has no replica"):
        check(phy2log, log2phy, logcnt)


def test_zero_logcnt():
    phy2log, log2phy, logcnt = triple()
    logcnt[0] = torch.tensor([3, 0, 1])
    with pytest.raises(PlacementError, match=r"logcnt\[0, 1\] = 0: every logical expert needs"):
        check(phy2log, log2phy, logcnt)


def test_logcnt_row_sum():
    phy2log, log2phy, logcnt = triple()
    logcnt[1, 2] = 3
    with pytest.raises(PlacementError, match="logcnt row of layer 1 sums to 5, expected num_replicas=4"):
        check(phy2log, log2phy, logcnt)


def test_logcnt_disagrees_with_phy2log():
    phy2log, log2phy, logcnt = triple()
    logcnt[0] = torch.tensor([1, 2, 1])
    with pytest.raises(PlacementError, match=r"logcnt\[0, 0\] = 1 but phy2log holds expert 0 in 2 slots"):
        check(phy2log, log2phy, logcnt)


def test_log2phy_too_narrow():
    phy2log, log2phy, logcnt = triple()
    with pytest.raises(PlacementError, match=r"log2phy has width 1, fewer than logcnt.max\(\) = 2"):
        check(phy2log, log2phy[:, :, :1], logcnt)


def test_missing_listing_inside_count():
    phy2log, log2phy, logcnt = triple()
    log2phy[0, 0] = torch.tensor([0, -1])
    with pytest.raises(PlacementError, match=r"log2phy\[0, 0, 1\] = -1 but logcnt\[0, 0\] = 2"):
        check(phy2log, log2phy, logcnt)


def test_padding_that_is_not_minus_one():
    phy2log, log2phy, logcnt = triple()
    log2phy[0, 1, 1] = 3
    with pytest.raises(PlacementError, match=r"log2phy\[0, 1, 1\] = 3 is padding past logcnt\[0, 1\] = 1"):
        check(phy2log, log2phy, logcnt)


def test_duplicate_slot():
    # Expert 0 of layer 0 lists slot 0 twice: the exploit that counts a load once.
    phy2log, log2phy, logcnt = triple()
    log2phy[0, 0] = torch.tensor([0, 0])
    with pytest.raises(PlacementError, match="slot 0 of layer 0 is listed 2 times in log2phy"):
        check(phy2log, log2phy, logcnt)


def test_log2phy_disagrees_with_phy2log():
    phy2log, log2phy, logcnt = triple()
    log2phy[1, 1, 0], log2phy[1, 2, 1] = 1, 2  # swapped listings of slots 1 and 2
    with pytest.raises(PlacementError, match=r"log2phy lists slot 1 under expert 1 in layer 1, but phy2log\[1, 1\] = 2"):
        check(phy2log, log2phy, logcnt)


def test_layer_count_is_checked_when_given():
    with pytest.raises(PlacementError, match=r"phy2log has shape \(2, 4\), expected \(3, 4\)"):
        check(*triple(), num_layers=3)


def test_cuda_outputs_are_validated_on_cpu_copies():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    check(*(t.cuda() for t in triple()))


@pytest.mark.parametrize(
    "scenario, message",
    [
        (Scenario(100, 4, 2, 8), "not divisible by num_gpus=8"),
        (Scenario(96, 4, 3, 8), "num_gpus=8 is not divisible by num_nodes=3"),
        (Scenario(96, 5, 2, 8), "not divisible into num_groups=5"),
        (Scenario(32, 4, 2, 8), "fewer than the 64 logical experts"),
        (Scenario(96, 4, 0, 8), "num_nodes must be a positive integer"),
    ],
)
def test_scenario_checks(scenario, message):
    with pytest.raises(ScenarioError, match=message):
        scenario.check(64)


def test_scenario_policy():
    assert Scenario(288, 8, 4, 32).hierarchical
    assert not Scenario(96, 8, 3, 12).hierarchical
