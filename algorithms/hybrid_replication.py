"""DeepSeek's EPLB with the seed's hybrid replica allocation and donor->receiver fix-up.

Extra replicas are handed out one at a time to the expert of largest benefit: for
the first 90% the benefit is weight / count (D'Hondt, DeepSeek's rule), for the last
10% (at least one) weight / (2 count - 1) (Sainte-Lague). Then, per row, one replica
moves from the expert of highest per-replica load to the one of lowest, but only
when that strictly lowers the row's highest per-replica load.

Note: the donor is the expert with the highest per-replica load, so taking a replica
away from it raises its own per-replica load above the old maximum; for positive
loads the fix-up can therefore never fire. It is kept because the seed specifies it.
"""

import torch

from eplb_bench import register

from ._hierarchy import Steps, greedy_packing, rebalance_with

FIXUP_TOLERANCE = 1e-12


def _allocate(weight, phy2log, replica_rank, logcnt, slots: range, divisor) -> None:
    """Give each slot in `slots` to the expert of largest weight / divisor(count), in place."""
    row_ids = torch.arange(weight.shape[0])
    for slot in slots:
        chosen = (weight / divisor(logcnt)).max(-1).indices
        phy2log[:, slot] = chosen
        replica_rank[:, slot] = logcnt[row_ids, chosen]
        logcnt[row_ids, chosen] += 1


def _fix_up(weight, phy2log, replica_rank, logcnt) -> None:
    """Move one replica donor->receiver in each row where that lowers the peak, in place.

    Args:
        weight: [X, num_log]; phy2log, replica_rank: [X, num_phy]; logcnt: [X, num_log].
    """
    row_ids = torch.arange(weight.shape[0])
    per_replica = weight / logcnt
    top_two = per_replica.topk(2, dim=-1)
    peak, runner_up = top_two.values[:, 0], top_two.values[:, 1]
    donor = top_two.indices[:, 0]
    receiver = per_replica.argmin(-1)
    donor_count, receiver_count = logcnt[row_ids, donor], logcnt[row_ids, receiver]
    new_donor = weight[row_ids, donor] / (donor_count - 1).clamp(min=1)
    new_receiver = weight[row_ids, receiver] / (receiver_count + 1)
    new_peak = torch.maximum(runner_up, torch.maximum(new_donor, new_receiver))
    moves = (donor != receiver) & (donor_count > 1) & (new_peak + FIXUP_TOLERANCE < peak)
    if not moves.any():
        return
    # The donor gives up its last replica (the one of highest rank).
    last_replica = (phy2log == donor.unsqueeze(1)) & (replica_rank == (donor_count - 1).unsqueeze(1))
    slot = last_replica.int().argmax(-1)
    rows = row_ids[moves]
    phy2log[rows, slot[moves]] = receiver[moves]
    replica_rank[rows, slot[moves]] = receiver_count[moves]
    logcnt[rows, donor[moves]] -= 1
    logcnt[rows, receiver[moves]] += 1


def sainte_lague_tail(num_extra: int) -> int:
    """How many of num_extra > 0 extra replicas go by weight / (2 count - 1): a tenth, at least one."""
    return max(1, (num_extra + 9) // 10)


def hybrid_replication(weight: torch.Tensor, num_phy: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D'Hondt for most extra replicas, Sainte-Lague for the last tenth, then the fix-up.

    Args:
        weight: [X, num_log]; num_phy >= num_log slots in all.
    Returns:
        phy2log: [X, num_phy]; replica_rank: [X, num_phy]; logcnt: [X, num_log].
    """
    rows, num_log = weight.shape
    num_extra = num_phy - num_log
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(rows, 1)
    replica_rank = torch.zeros(rows, num_phy, dtype=torch.int64)
    logcnt = torch.ones(rows, num_log, dtype=torch.int64)
    if num_extra == 0:
        return phy2log, replica_rank, logcnt
    tail = sainte_lague_tail(num_extra)
    bulk_end = num_phy - tail
    _allocate(weight, phy2log, replica_rank, logcnt, range(num_log, bulk_end), lambda count: count)
    _allocate(weight, phy2log, replica_rank, logcnt, range(bulk_end, num_phy), lambda count: 2 * count - 1)
    if num_log > 1:
        _fix_up(weight, phy2log, replica_rank, logcnt)
    return phy2log, replica_rank, logcnt


HYBRID_STEPS = Steps(
    pack_groups=greedy_packing,
    replicate=hybrid_replication,
    pack_replicas=greedy_packing,
)


@register("hybrid_replication", description="DeepSeek's EPLB plus the seed's D'Hondt/Sainte-Lague replication and fix-up")
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract."""
    return rebalance_with(HYBRID_STEPS, weight, num_replicas, num_groups, num_nodes, num_gpus)
