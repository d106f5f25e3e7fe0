"""fast: every layer in one pass of array code, on the device of its input.

Pipeline (no Python loop over layers or experts; loops run over slots per GPU or
refinement rounds only):

1. Policy, per layer. Whole expert groups are packed onto nodes (as DeepSeek's
   hierarchical policy does). A layer keeps that grouping when the heaviest node
   carries at most `locality_tolerance` more than the mean node load; otherwise
   its experts are spread over all GPUs (the global policy). Keeping groups on a
   node keeps a token's dispatch to the few nodes of the groups it routes to;
   spreading buys balance with inter-node traffic (see `internode_share`).
2. Replica counts, per row, under three divisor rules, each computed exactly:
   `beta` rules give the next replica of an expert holding c replicas the priority
   weight / (c - beta) (beta = 0 is D'Hondt, DeepSeek's rule; beta = 0.5 favours
   experts with a single replica), and the seed's hybrid rule (D'Hondt for 90% of
   the extra replicas, weight / (2c - 1) for the rest).
3. Packing of each rule's replicas: sorted rounds (every round gives each GPU one
   replica, the heaviest of the round to the lightest GPU), then rounds of swaps
   between the i-th heaviest and the i-th lightest GPU, each swap the one that
   best evens the pair out.
4. Per row, the rule whose packing has the lowest maximum GPU load wins.
5. With `prev_phy2log`, a layer whose previous placement is within
   `migration_tolerance` of the new one's maximum GPU load on this window keeps the
   previous placement; elsewhere replicas that stay on a GPU keep their slots.

On the CPU the two sorts go through NumPy's vectorized sort of packed integer keys
(torch's CPU sort is several times slower on these sizes); on CUDA through
torch.sort of the same keys, so both devices make the same choices.
"""

from __future__ import annotations

import numpy as np
import torch

from eplb_bench import register

LOCALITY_TOLERANCE = 0.05
MIGRATION_TOLERANCE = 0.0
REFINE_ROUNDS = 12
# Swaps per round: between the i-th heaviest and i-th lightest bin, i < this.
PAIRS_PER_ROUND = 2
# Experts of spread layers go to nodes by this many sorted rounds, then in snake order.
NODE_SORTED_ROUNDS = 16
# Count rules, see step 2 above: a beta, or "seed" for the seed's hybrid rule.
COUNT_RULES = (0.5, 0.1, "seed")


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """values: [B, n], non-negative -> [B, n] int64 indices, largest first, ties by index.

    Values are compared as float32. Each is packed with its index into one int64 key
    so that a plain ascending sort of keys gives the order.
    """
    bits = values.float().clamp(min=0).view(torch.int32).to(torch.int64)
    index = torch.arange(values.shape[-1], device=values.device, dtype=torch.int64)
    keys = ((0x7FFFFFFF - bits) << 32) | index
    if keys.device.type == "cpu":
        keys = torch.from_numpy(np.sort(keys.numpy(), axis=-1))
    else:
        keys = torch.sort(keys, dim=-1).values
    return keys & 0xFFFFFFFF


def lightest_first(loads: torch.Tensor) -> torch.Tensor:
    """loads: [B, k] -> [B, k] int64 indices, smallest load first, ties by index."""
    if loads.device.type == "cuda" or loads.shape[-1] <= 16:
        return loads.argsort(dim=-1, stable=True)
    return descending_order(loads.max(-1, keepdim=True).values - loads)


def counts_at(weight: torch.Tensor, threshold: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Replicas per expert when every replica priority above `threshold` is granted.

    Args:
        weight: [B, n]; threshold: [B, 1] > 0; beta: [B, 1].
    Returns:
        [B, n] int64: max(1, ceil(weight / threshold + beta)).
    """
    return torch.ceil(weight / threshold + beta).clamp(min=1).to(torch.int64)


def divisor_counts(weight: torch.Tensor, num_slots: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Replica counts of a divisor rule: the next replica of an expert holding c
    replicas has priority weight / (c - beta); the num_slots - n extra replicas go
    to the highest priorities (beta = 0: D'Hondt, DeepSeek's rule).

    Args:
        weight: [B, n] float, rows with a positive sum; num_slots: [B, 1] int64,
        each >= n; beta: [B, 1], in [0, 1).
    Returns:
        [B, n] int64 counts, row b summing to num_slots[b].
    """
    rows, num_items = weight.shape
    # A threshold whose counts do not overshoot: counts_at is monotone, so every
    # priority above it belongs to the final allocation. Solve the continuous
    # version sum(max(1, w / t + beta)) = num_slots - (big experts) with a few
    # fixed-point steps, aiming low so that rounding up rarely overshoots.
    total = weight.sum(-1, keepdim=True)
    threshold = total / num_slots
    for _ in range(3):
        big = weight > (1 - beta) * threshold
        num_big = big.sum(-1, keepdim=True)
        room = num_slots - num_items - beta * num_big
        threshold = torch.where(room > 0, (weight * big).sum(-1, keepdim=True) / room.clamp(min=1), total)
    counts = counts_at(weight, threshold, beta)
    over = counts.sum(-1, keepdim=True) > num_slots
    while bool(over.any()):
        threshold = torch.where(over, threshold * 1.25, threshold)
        counts = counts_at(weight, threshold, beta)
        over = counts.sum(-1, keepdim=True) > num_slots
    return grant_rest(weight, counts, num_slots, beta)


def grant_rest(weight: torch.Tensor, counts: torch.Tensor, num_slots: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Add the missing replicas of each row one priority at a time (see divisor_counts).

    Args:
        weight: [B, n]; counts: [B, n] with row sums <= num_slots [B, 1]; beta: [B, 1].
    Returns:
        [B, n] int64 counts summing to num_slots.
    """
    rows, num_items = weight.shape
    missing = num_slots - counts.sum(-1, keepdim=True)
    most = int(missing.max())
    if most <= 0:
        return counts
    # Candidates: each expert's next `depth` replicas; deeper when an expert took all.
    depth = 2
    while True:
        step = torch.arange(depth, device=weight.device, dtype=weight.dtype)
        priority = weight.unsqueeze(-1) / (counts.unsqueeze(-1) + step - beta.unsqueeze(-1))
        top = descending_order(priority.view(rows, num_items * depth))[:, :most]
        granted = (torch.arange(top.shape[1], device=weight.device) < missing).to(torch.int64)
        extra = torch.zeros_like(counts).scatter_add_(1, top // depth, granted)
        if int(extra.max()) < depth:
            return counts + extra
        depth *= 2


def rule_counts(weight: torch.Tensor, num_slots: int, num_rows: int) -> torch.Tensor:
    """Counts under every rule of COUNT_RULES.

    Args:
        weight: [len(COUNT_RULES) * num_rows, n], rule-major.
    Returns:
        [len(COUNT_RULES) * num_rows, n] int64.
    """
    device, dtype = weight.device, weight.dtype
    betas = [0.0 if rule == "seed" else rule for rule in COUNT_RULES]
    num_extra = num_slots - weight.shape[1]
    tail = max(1, -(-num_extra // 10)) if num_extra else 0
    targets = [num_slots - tail if rule == "seed" else num_slots for rule in COUNT_RULES]
    per_row = lambda values, kind: torch.tensor(values, dtype=kind, device=device).repeat_interleave(num_rows).unsqueeze(-1)
    counts = divisor_counts(weight, per_row(targets, torch.int64), per_row(betas, dtype))
    if "seed" not in COUNT_RULES or not tail:
        return counts
    # The seed's tail: the last tenth of the extra replicas by weight / (2c - 1),
    # which ranks like weight / (c - 0.5). Other rules' rows are complete already.
    return grant_rest(weight, counts, torch.full_like(counts[:, :1], num_slots), torch.full_like(weight[:, :1], 0.5))


def pack_in_rounds(loads: torch.Tensor, num_bins: int, sorted_rounds: int | None = None) -> torch.Tensor:
    """Sorted rounds: each round gives every bin one item, the heaviest to the lightest bin.

    After `sorted_rounds` rounds (default all) the bins' order is frozen and the
    remaining, lighter items are dealt in snake order over it: lightest bin first,
    then the reverse, and so on.

    Args:
        loads: [B, m] item loads, m a multiple of num_bins.
    Returns:
        [B, m] int64: the item at each position; bin b holds positions
        b * (m / num_bins) onwards.
    """
    rows, num_items = loads.shape
    per_bin = num_items // num_bins
    heaviest_first = descending_order(loads)
    ranked = loads.gather(1, heaviest_first).view(rows, per_bin, num_bins)
    bins = torch.empty(rows, per_bin, num_bins, dtype=torch.int64, device=loads.device)
    bins[:, 0] = torch.arange(num_bins, device=loads.device)
    bin_load = ranked[:, 0].clone()
    exact = per_bin if sorted_rounds is None else min(per_bin, max(1, sorted_rounds))
    for round_ in range(1, exact):
        order = lightest_first(bin_load)
        bins[:, round_] = order
        bin_load.scatter_add_(1, order, ranked[:, round_])
    if exact < per_bin:
        order = lightest_first(bin_load)
        bins[:, exact::2] = order.unsqueeze(1)
        bins[:, exact + 1::2] = order.flip(-1).unsqueeze(1)
    position = bins * per_bin + torch.arange(per_bin, device=loads.device).view(1, per_bin, 1)
    return torch.empty_like(heaviest_first).scatter_(1, position.view(rows, num_items), heaviest_first)


def refine_by_swaps(loads: torch.Tensor, items: torch.Tensor, num_bins: int, rounds: int) -> torch.Tensor:
    """Pair the i-th heaviest bin with the i-th lightest and, in every pair, make the
    one swap of items that brings the two loads closest; repeat while the heaviest
    pair still improves, at most `rounds` times.

    Args:
        loads: [B, m] load at each position (updated in place); items: [B, m] the
        item at each position.
    Returns:
        [B, m] items after the swaps.
    """
    rows, num_items = loads.shape
    per_bin = num_items // num_bins
    half = min(num_bins // 2, PAIRS_PER_ROUND)
    if per_bin == 1 or half == 0:
        return items
    items = items.clone()
    offsets = torch.arange(per_bin, device=loads.device)
    for _ in range(rounds):
        bin_load = loads.view(rows, num_bins, per_bin).sum(-1)
        order = lightest_first(bin_load)
        light, heavy = order[:, :half], order[:, num_bins - half:].flip(-1)
        gap = (bin_load.gather(1, heavy) - bin_load.gather(1, light)).unsqueeze(-1)
        heavy_pos = (heavy * per_bin).unsqueeze(-1) + offsets
        light_pos = (light * per_bin).unsqueeze(-1) + offsets
        heavy_loads = loads.gather(1, heavy_pos.view(rows, -1)).view(rows, half, per_bin, 1)
        light_loads = loads.gather(1, light_pos.view(rows, -1)).view(rows, half, 1, per_bin)
        # Moving d = a - b from the heavy to the light bin helps iff 0 < d < gap,
        # and leaves |gap - 2d| between them; other swaps leave the gap.
        residual = (gap.unsqueeze(-1) - 2 * (heavy_loads - light_loads)).abs().view(rows, half, -1)
        best, choice = residual.min(-1)
        useful = best < gap.squeeze(-1)
        if not bool(useful[:, 0].any()):
            break
        src = heavy_pos.gather(2, (choice // per_bin).unsqueeze(-1)).squeeze(-1)
        dst = light_pos.gather(2, (choice % per_bin).unsqueeze(-1)).squeeze(-1)
        for values in (loads, items):
            at_src, at_dst = values.gather(1, src), values.gather(1, dst)
            values.scatter_(1, src, torch.where(useful, at_dst, at_src))
            values.scatter_(1, dst, torch.where(useful, at_src, at_dst))
    return items


def replica_experts(counts: torch.Tensor, num_slots: int) -> torch.Tensor:
    """counts: [B, n] summing to num_slots -> [B, num_slots], the expert of each
    replica, replicas of one expert adjacent."""
    starts = torch.zeros(counts.shape[0], num_slots + 1, dtype=torch.int64, device=counts.device)
    starts.scatter_add_(1, counts.cumsum(-1), torch.ones_like(counts))
    return starts[:, :num_slots].cumsum(-1)


def spread_placement(weight: torch.Tensor, num_slots: int, num_bins: int, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global policy on each row: replicate under every count rule, pack, keep
    the rule whose maximum bin load is lowest.

    Args:
        weight: [B, n] float64.
    Returns:
        phy2log: [B, num_slots], experts 0..n-1, bin b holding slots
        b * num_slots / num_bins onwards; logcnt: [B, n].
    """
    rows = weight.shape[0]
    num_rules = len(COUNT_RULES)
    usable = torch.where(weight.sum(-1, keepdim=True) > 0, weight, torch.ones_like(weight)).repeat(num_rules, 1)
    counts = rule_counts(usable, num_slots, rows)
    replica_expert = replica_experts(counts, num_slots)
    loads = (usable / counts).gather(1, replica_expert)
    position_item = pack_in_rounds(loads, num_bins)
    placed_loads = loads.gather(1, position_item)
    # The rule is chosen before the refinement, which then works on the winners only.
    peak = placed_loads.view(-1, num_bins, num_slots // num_bins).sum(-1).max(-1).values
    best = peak.view(num_rules, rows).argmin(0) * rows + torch.arange(rows, device=weight.device)
    position_item = refine_by_swaps(placed_loads[best], position_item[best], num_bins, rounds)
    return replica_expert[best].gather(1, position_item), counts[best]


def experts_to_nodes(weight: torch.Tensor, num_groups: int, num_nodes: int,
                     locality_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the policy of each layer and the node of each expert (step 1).

    Args:
        weight: [L, E].
    Returns:
        nodemajor_to_log: [L, E], the experts of node 0, then node 1, ...;
        local: [L] bool, True where whole groups stay on one node.
    """
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    group_load = weight.view(num_layers, num_groups, group_size).sum(-1)
    position_group = pack_in_rounds(group_load, num_nodes)
    position_group = refine_by_swaps(group_load.gather(1, position_group), position_group, num_nodes, REFINE_ROUNDS)
    node_load = group_load.gather(1, position_group).view(num_layers, num_nodes, -1).sum(-1)
    local = node_load.max(-1).values <= (1 + locality_tolerance) * node_load.mean(-1)
    by_group = ((position_group * group_size).unsqueeze(-1)
                + torch.arange(group_size, device=weight.device)).view(num_layers, num_logical)
    if bool(local.all()):
        return by_group, local
    # Spread layers deal their experts out one by one over the nodes.
    by_expert = pack_in_rounds(weight, num_nodes, sorted_rounds=NODE_SORTED_ROUNDS)
    return torch.where(local.unsqueeze(-1), by_group, by_expert), local


def node_placement(weight: torch.Tensor, nodemajor_to_log: torch.Tensor, num_replicas: int, num_nodes: int,
                   num_gpus: int, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node's experts get the node's slots: the global policy inside every node.

    Args:
        weight: [L, E]; nodemajor_to_log: [L, E], see experts_to_nodes.
    Returns:
        phy2log: [L, num_replicas]; logcnt: [L, E].
    """
    num_layers, num_logical = weight.shape
    experts_per_node = num_logical // num_nodes
    node_weight = weight.gather(1, nodemajor_to_log).view(num_layers * num_nodes, experts_per_node)
    local_phy, local_cnt = spread_placement(node_weight, num_replicas // num_nodes, num_gpus // num_nodes, rounds)
    node_offset = (torch.arange(num_nodes, device=weight.device) * experts_per_node).repeat(num_layers).unsqueeze(-1)
    phy2log = nodemajor_to_log.gather(1, (local_phy + node_offset).view(num_layers, num_replicas))
    logcnt = torch.empty_like(nodemajor_to_log).scatter_(1, nodemajor_to_log, local_cnt.view(num_layers, -1))
    return phy2log, logcnt


def counts_of(phy2log: torch.Tensor, num_logical: int) -> torch.Tensor:
    """phy2log: [L, R] -> logcnt: [L, num_logical]."""
    logcnt = torch.zeros(phy2log.shape[0], num_logical, dtype=torch.int64, device=phy2log.device)
    return logcnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))


def peak_gpu_load(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """[L] maximum GPU load of each layer's placement under weight [L, E]."""
    slot_load = (weight / logcnt.clamp(min=1)).gather(1, phy2log)
    return slot_load.view(weight.shape[0], num_gpus, -1).sum(-1).max(-1).values


def occurrence(values: torch.Tensor) -> torch.Tensor:
    """values: [rows, k] -> [rows, k], how many equal values precede each entry in its row."""
    same = values.unsqueeze(-1) == values.unsqueeze(-2)
    earlier = torch.ones(values.shape[-1], values.shape[-1], dtype=torch.bool, device=values.device).tril(-1)
    return (same & earlier).sum(-1)


def keep_slots(phy2log: torch.Tensor, prev_phy2log: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """Reorder the slots inside each GPU so that a replica of an expert the GPU held
    before takes that expert's previous slot (vLLM's preserve_intragpu_slots).

    Args:
        phy2log, prev_phy2log: [L, R].
    Returns:
        [L, R]: on every GPU the same replicas as phy2log.
    """
    num_layers, num_replicas = phy2log.shape
    per_gpu = num_replicas // num_gpus
    if per_gpu == 1:
        return phy2log
    new = phy2log.view(-1, per_gpu)
    old = prev_phy2log.view(-1, per_gpu)
    # Copies of one expert on a GPU are numbered so that they pair up one to one.
    match = (new * per_gpu + occurrence(new)).unsqueeze(-1) == (old * per_gpu + occurrence(old)).unsqueeze(-2)
    kept_new, kept_old = match.any(-1), match.any(-2)
    # The others fill the remaining slots in order.
    free_slots = descending_order((~kept_old).to(torch.float32))
    fill_rank = ((~kept_new).cumsum(-1) - 1).clamp(min=0)
    target = torch.where(kept_new, match.to(torch.int8).argmax(-1), free_slots.gather(1, fill_rank))
    return torch.empty_like(new).scatter_(1, target, new).view(num_layers, num_replicas)


def slots_of_experts(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy: [L, E, logcnt.max()], each expert's slots in increasing order, -1 padded."""
    num_layers, num_replicas = phy2log.shape
    num_logical = logcnt.shape[1]
    width = int(logcnt.max())
    slots = torch.arange(num_replicas, device=phy2log.device)
    by_expert = descending_order((num_logical * num_replicas - phy2log * num_replicas - slots).float())
    expert = phy2log.gather(1, by_expert)
    rank = slots - (logcnt.cumsum(-1) - logcnt).gather(1, expert)
    log2phy = torch.full((num_layers, num_logical * width), -1, dtype=torch.int64, device=phy2log.device)
    log2phy.scatter_(1, expert * width + rank, by_expert)
    return log2phy.view(num_layers, num_logical, width)


def plan_layers(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                locality_tolerance: float, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phy2log [L, R] and logcnt [L, E] of the new placement, without regard to the old."""
    if num_nodes > 1 and num_groups % num_nodes == 0:
        nodemajor_to_log, _ = experts_to_nodes(weight, num_groups, num_nodes, locality_tolerance)
        return node_placement(weight, nodemajor_to_log, num_replicas, num_nodes, num_gpus, rounds)
    return spread_placement(weight, num_replicas, num_gpus, rounds)


@register("fast", description="all layers at once in array code, CPU and CUDA; per-layer policy; migration-aware",
          devices=("cpu", "cuda"))
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, *, prev_phy2log=None,
                      locality_tolerance=LOCALITY_TOLERANCE, migration_tolerance=MIGRATION_TOLERANCE,
                      rounds=REFINE_ROUNDS):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.contract.

    Args:
        prev_phy2log: [num_layers, num_replicas], the placement in service, or None.
        locality_tolerance: a layer keeps whole groups on nodes while its heaviest
            node is at most this fraction above the mean node load.
        migration_tolerance: a layer keeps its previous placement while that
            placement's maximum GPU load on `weight` is at most this fraction above
            the new one's (0: only when it is no worse), so the knob trades at most
            that much of each layer's balance for fewer moved replicas.
        rounds: at most this many swap rounds in each packing.
    """
    num_logical = weight.shape[1]
    w = weight.detach().to(torch.float64)
    phy2log, logcnt = plan_layers(w, num_replicas, num_groups, num_nodes, num_gpus, locality_tolerance, rounds)
    if prev_phy2log is not None:
        prev = prev_phy2log.to(device=w.device, dtype=torch.int64)
        prev_cnt = counts_of(prev, num_logical)
        stay = (prev_cnt > 0).all(-1) & (peak_gpu_load(w, prev, prev_cnt, num_gpus)
                                         <= (1 + migration_tolerance) * peak_gpu_load(w, phy2log, logcnt, num_gpus))
        phy2log = torch.where(stay.unsqueeze(-1), prev, keep_slots(phy2log, prev, num_gpus))
        logcnt = torch.where(stay.unsqueeze(-1), prev_cnt, logcnt)
    return phy2log, slots_of_experts(phy2log, logcnt), logcnt
