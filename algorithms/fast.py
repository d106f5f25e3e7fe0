"""fast: every layer in one pass of array code, on the device of its input.

Pipeline (no Python loop over layers or experts; loops run over packing rounds and
swap rounds only):

1. Policy, per layer, where the scenario allows DeepSeek's hierarchical policy.
   Whole expert groups are packed onto nodes. A layer keeps that grouping when its
   heaviest node carries at most `locality_tolerance` more than the mean node
   load, and its experts then share their node's slots; any other layer is placed
   as in the global policy, over all GPUs at once. Keeping groups whole keeps a
   token's dispatch to the few nodes of its groups (see `internode_share`);
   spreading buys balance. `fast_spread` spreads every layer.
2. Replica counts: Sainte-Laguë (weight / (c - 1/2)), or D'Hondt (weight / c) in
   rows where Sainte-Laguë's heaviest replica would raise the floor of the peak
   GPU load; computed exactly from a few ranked candidates.
3. Packing: sorted rounds (every round gives each GPU one replica, the heaviest of
   the round to the lightest GPU), then, in the global policy, rounds of swaps
   between the i-th heaviest and the i-th lightest GPU, each the swap that evens
   the pair out best. Where the scenario allows the hierarchical policy the sorted
   rounds stand alone unless there are no extra slots.
4. With `prev_phy2log`: nodes and GPUs are renumbered to follow the previous
   placement and replicas that stay on a GPU keep their slots; with
   `migration_tolerance`, a layer keeps or repairs its previous placement when
   that costs at most that fraction of its peak GPU load.

On the CPU the sorts go through NumPy (a sort of packed integer keys for long rows,
argsort for short ones, a radix sort for expert numbers), several times faster than
torch's CPU sort at these sizes, and so do the packing rounds; on CUDA the same steps
run as torch operations, and a call without prev_phy2log never waits for the device
(no data-dependent branch; log2phy is R - E + 1 wide).
"""

from __future__ import annotations

import numpy as np
import torch

from eplb_bench import register

LOCALITY_TOLERANCE = 0.05
REFINE_ROUNDS = 2
# Where the scenario allows the hierarchical policy the sorted rounds stand alone,
# inside nodes and in spread layers alike (see rebalance_experts' `rounds`).
NODE_REFINE_ROUNDS = 0
NO_REDUNDANCY_ROUNDS = 16
REPAIR_ROUNDS = 8
REPAIR_PAIRS = 4
# Swaps per round: between the i-th heaviest and i-th lightest bin, i < this.
PAIRS_PER_ROUND = 2
# The next replica of an expert with c replicas has priority weight / (c - SAINTE_LAGUE).
SAINTE_LAGUE = 0.5
# locality_tolerance that spreads every layer (fast_spread).
SPREAD_ALWAYS = float("-inf")


def order_of_keys(keys: np.ndarray) -> torch.Tensor:
    """keys: [B, n] int64 in [0, 2**31), overwritten -> [B, n] int64 indices, smallest key
    first, ties by index: each key is packed with its index so that a plain sort is stable."""
    np.left_shift(keys, 32, out=keys)
    np.bitwise_or(keys, np.arange(keys.shape[-1]), out=keys)
    keys.sort(axis=-1)
    return torch.from_numpy(np.bitwise_and(keys, 0xFFFFFFFF, out=keys))


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """values: [B, n], non-negative -> [B, n] int64 indices, largest first, ties by index.

    Values are compared as float32. Each is packed with its index into one int64 key
    so that a plain ascending sort of keys gives the order.
    """
    num_items = values.shape[-1]
    if values.device.type == "cpu":
        keys = values.float().numpy().view(np.int32).astype(np.int64)
        return order_of_keys(np.subtract(0x7FFFFFFF, keys, out=keys))
    bits = values.float().view(torch.int32).to(torch.int64)
    keys = ((0x7FFFFFFF - bits) << 32) | torch.arange(num_items, device=values.device)
    return torch.sort(keys, dim=-1).values & 0xFFFFFFFF


def ascending_order(values: torch.Tensor, bound: int) -> torch.Tensor:
    """values: [B, n] integers in [0, bound) -> [B, n] int64 indices, smallest first,
    ties by index (a stable sort).

    On the CPU small integers go through NumPy's radix sort, larger ones through a
    sort of keys that pack each value with its index.
    """
    if values.device.type == "cpu":
        if bound <= 2 ** 15:
            return torch.from_numpy(np.argsort(values.numpy().astype(np.int16), axis=-1, kind="stable"))
        return order_of_keys(values.numpy().astype(np.int64))
    return torch.sort(values, dim=-1, stable=True).indices


def lightest_bins(loads: np.ndarray) -> np.ndarray:
    """loads: [B, k] NumPy array, non-negative -> [B, k] bins, lightest first, ties by index.

    Short rows take a stable argsort; longer ones a sort of float32 keys packed with
    their index, as lightest_first does on CUDA.
    """
    if loads.shape[-1] <= 32:
        return np.argsort(loads, axis=-1, kind="stable")
    keys = np.ascontiguousarray(loads, dtype=np.float32).view(np.int32).astype(np.int64)
    return order_of_keys(keys).numpy()


def lightest_first(loads: torch.Tensor) -> torch.Tensor:
    """loads: [B, k], non-negative -> [B, k] int64 indices, smallest load first, ties by index."""
    if loads.device.type == "cpu":
        return torch.from_numpy(lightest_bins(loads.numpy()))
    if loads.shape[-1] <= 32:
        return loads.argsort(dim=-1, stable=True)
    bits = loads.float().view(torch.int32).to(torch.int64)
    keys = (bits << 32) | torch.arange(loads.shape[-1], device=loads.device)
    return torch.sort(keys, dim=-1).values & 0xFFFFFFFF


def top_replicas(weight: torch.Tensor, counts: torch.Tensor, grants: int, beta: float, fresh: bool) -> torch.Tensor:
    """Grant the `grants` highest replica priorities of every row.

    The next replica of an expert holding c replicas has priority weight / (c - beta).
    Only a few candidates can win: rank the experts by their next priority; the
    (t+1)-th next replica of the expert ranked r can only be granted if every
    better-ranked expert got its first one, so r < grants, and, when every expert
    holds one replica (`fresh`), if they all got t + 1, so (r + 1)(t + 1) <= grants.
    One small sort of those candidates decides.

    Args:
        weight: [B, n]; counts: [B, n] float, current counts.
    Returns:
        [B, n] counts with the grants added; ties go to the better-ranked expert.
    """
    rows, num_items = weight.shape
    if grants <= 0:
        return counts
    if grants == 1:  # the first of the highest priorities (argmax takes the first of equals)
        best = (weight / (counts - beta)).argmax(-1, keepdim=True)
        return counts.scatter_add(1, best, torch.ones_like(best, dtype=counts.dtype))
    ranked = descending_order(weight / (counts - beta))
    reach = min(grants, num_items)
    steps_of_rank = grants // np.arange(1, reach + 1) if fresh else np.full(reach, grants)
    rank = np.repeat(np.arange(reach), steps_of_rank)
    step = np.arange(len(rank)) - np.repeat(np.cumsum(steps_of_rank) - steps_of_rank, steps_of_rank)
    rank, step = torch.from_numpy(np.stack([rank, step])).to(weight.device)
    expert = ranked.index_select(1, rank)
    priority = weight.gather(1, expert) / (counts.gather(1, expert) + (step.to(weight.dtype) - beta))
    chosen = descending_order(priority)[:, :grants]
    return counts.scatter_add(1, expert.gather(1, chosen), torch.ones_like(chosen, dtype=counts.dtype))


def replica_counts(weight: torch.Tensor, num_slots: int, num_bins: int) -> torch.Tensor:
    """Replica counts by Sainte-Laguë (the next replica of an expert with c has priority
    weight / (c - 1/2)), except in rows where that would raise the floor of the peak
    bin load, max(mean bin load, heaviest replica): there D'Hondt (weight / c), which
    makes the heaviest replica as light as it can be.

    Sainte-Laguë hands replicas to more experts than D'Hondt and plans better for the
    next window wherever replicas are small next to a bin's share (see docs/fast.md);
    with few slots per bin a heavy replica sets the peak, and D'Hondt's lighter one wins.

    Args:
        weight: [B, n], rows with positive sums; num_slots >= n.
    Returns:
        [B, n] int64 counts, each row summing to num_slots.
    """
    ones = torch.ones_like(weight)
    num_extra = num_slots - weight.shape[1]
    if num_extra <= 0:
        return ones.to(torch.int64)
    counts = top_replicas(weight, ones, num_extra, SAINTE_LAGUE, fresh=True)
    mean_bin = weight.sum(-1) / num_bins
    heavy = (weight / counts).max(-1).values > mean_bin
    # D'Hondt only where Sainte-Laguë's heaviest replica is above the mean bin: those
    # rows on the CPU; every row on CUDA, where picking rows would wait for the device.
    if weight.device.type == "cpu":
        rows = heavy.nonzero().squeeze(1)
        if rows.numel() == 0:
            return counts.to(torch.int64)
    else:
        rows = torch.arange(weight.shape[0], device=weight.device)
    part, chosen = weight.index_select(0, rows), counts.index_select(0, rows)
    dhondt = top_replicas(part, torch.ones_like(part), num_extra, 0.0, fresh=True)
    floor_dhondt = torch.maximum((part / dhondt).max(-1).values, mean_bin.index_select(0, rows))
    raised = heavy.index_select(0, rows) & ((part / chosen).max(-1).values > floor_dhondt)
    counts.index_copy_(0, rows, torch.where(raised.unsqueeze(-1), dhondt, chosen))
    return counts.to(torch.int64)


def deal_sorted(ranked: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Sorted rounds: round r deals items r * num_bins onwards (heaviest first), the
    heaviest to the lightest bin so far; round 0 gives bin b item b.

    Args:
        ranked: [B, m] non-negative item loads, heaviest first; m a multiple of num_bins.
    Returns:
        [B, m] int64: the item (a column of ranked) at each position; bin b holds
        positions b * (m / num_bins) onwards.
    """
    rows, num_items = ranked.shape
    per_bin = num_items // num_bins
    device = ranked.device
    if device.type == "cpu":  # NumPy runs these small steps with several times less overhead
        rounds = ranked.numpy().reshape(rows, per_bin, num_bins)
        row = np.arange(rows)[:, None]
        bin_of = [np.broadcast_to(np.arange(num_bins), (rows, num_bins))]
        load = rounds[:, 0].copy()
        for step in range(1, per_bin):
            bin_of.append(lightest_bins(load))
            if step + 1 < per_bin:
                load[row, bin_of[-1]] += rounds[:, step]
        bins = torch.from_numpy(np.stack(bin_of, 1))
    else:
        rounds = ranked.view(rows, per_bin, num_bins)
        bin_of = [torch.arange(num_bins, device=device).expand(rows, -1)]
        load = rounds[:, 0].clone()
        for step in range(1, per_bin):
            bin_of.append(lightest_first(load))
            if step + 1 < per_bin:
                load.scatter_add_(1, bin_of[-1], rounds[:, step])
        bins = torch.stack(bin_of, 1)                                   # [B, rounds, num_bins]
    position = (bins * per_bin + torch.arange(per_bin, device=device).view(1, per_bin, 1)).view(rows, num_items)
    items = torch.arange(num_items, device=device).expand(rows, -1)
    return torch.empty_like(position).scatter_(1, position, items)


def refine_by_swaps(item_loads: torch.Tensor, position_item: torch.Tensor, num_bins: int, rounds: int,
                    pairs: int = PAIRS_PER_ROUND) -> torch.Tensor:
    """Pair the i-th heaviest bin with the i-th lightest and, in every pair, make the
    one swap of items that brings the two loads closest; repeat while the heaviest
    pair still improves, at most `rounds` times.

    Args:
        item_loads: [B, m] load of each item; position_item: [B, m] the item at
        each position (bin b holds positions b * m / num_bins onwards).
    Returns:
        [B, m] the item at each position after the swaps.
    """
    rows, num_items = item_loads.shape
    per_bin = num_items // num_bins
    half = min(num_bins // 2, pairs)
    if per_bin == 1 or half == 0:
        return position_item
    position_item = position_item.clone()
    for _ in range(rounds):
        placed = item_loads.gather(1, position_item).view(rows, num_bins, per_bin)
        order = lightest_first(placed.sum(-1))
        by_load = placed.gather(1, order.unsqueeze(-1).expand(-1, -1, per_bin))   # bins, lightest first
        light, heavy = by_load[:, :half], by_load[:, num_bins - half:].flip(1)
        half_gap = (heavy.sum(-1) - light.sum(-1)) / 2
        # Moving d = a - b from the heavy bin to the light one helps iff 0 < d < gap
        # and leaves |gap - 2d| = 2 |(a - gap / 2) - b| between them.
        score = ((heavy - half_gap.unsqueeze(-1)).unsqueeze(-1) - light.unsqueeze(-2)).abs()
        best, choice = score.view(rows, half, -1).min(-1)
        useful = best < half_gap
        if item_loads.device.type == "cpu" and not bool(useful[:, 0].any()):  # CUDA: no wait for the device
            break
        src = order[:, num_bins - half:].flip(-1) * per_bin + choice // per_bin
        dst = order[:, :half] * per_bin + choice % per_bin
        at_src, at_dst = position_item.gather(1, src), position_item.gather(1, dst)
        position_item.scatter_(1, src, torch.where(useful, at_dst, at_src))
        position_item.scatter_(1, dst, torch.where(useful, at_src, at_dst))
    return position_item


def replica_experts(counts: torch.Tensor, num_slots: int) -> torch.Tensor:
    """counts: [B, n] summing to num_slots -> [B, num_slots], the expert of each
    replica, replicas of one expert adjacent."""
    starts = torch.zeros(counts.shape[0], num_slots + 1, dtype=torch.int64, device=counts.device)
    starts.scatter_add_(1, counts.cumsum(-1), torch.ones_like(counts))
    return starts[:, :num_slots].cumsum(-1)


def place_rows(weight: torch.Tensor, num_slots: int, num_bins: int, rounds: int) -> tuple[torch.Tensor, ...]:
    """The global policy on each row: replica counts, sorted rounds, swap rounds.

    Args:
        weight: [B, n] float, non-negative.
    Returns:
        phy2log: [B, num_slots], the expert of each slot (bin b holds slots
        b * num_slots / num_bins onwards); rank: [B, num_slots], the copy number of
        each slot's expert (0 for its first slot); counts: [B, n] int64.
    """
    usable = torch.where(weight.sum(-1, keepdim=True) > 0, weight, torch.ones_like(weight))
    counts = replica_counts(usable, num_slots, num_bins)
    replica_expert = replica_experts(counts, num_slots)      # copies of an expert adjacent
    starts = counts.cumsum(-1) - counts
    copy_number = torch.arange(num_slots, device=weight.device) - starts.gather(1, replica_expert)
    loads = (usable / counts).gather(1, replica_expert)
    heaviest_first = descending_order(loads)
    position = heaviest_first.gather(1, deal_sorted(loads.gather(1, heaviest_first), num_bins))
    position = refine_by_swaps(loads, position, num_bins, rounds)
    return replica_expert.gather(1, position), copy_number.gather(1, position), counts


def groups_to_nodes(weight: torch.Tensor, num_groups: int, num_nodes: int,
                    locality_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole expert groups packed onto nodes, and the policy of each layer (step 1).

    Args:
        weight: [L, E].
    Returns:
        nodemajor_to_log: [L, E], the experts of node 0, then node 1, ...;
        local: [L] bool, True where the heaviest node is at most locality_tolerance
        above the mean node load, so that groups stay whole on nodes.
    """
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    group_load = weight.view(num_layers, num_groups, group_size).sum(-1)
    heaviest_first = descending_order(group_load)
    position_group = heaviest_first.gather(1, deal_sorted(group_load.gather(1, heaviest_first), num_nodes))
    if num_groups > 2 * num_nodes:  # with two groups per node the rounds pair optimally
        position_group = refine_by_swaps(group_load, position_group, num_nodes, NO_REDUNDANCY_ROUNDS)
    node_load = group_load.gather(1, position_group).view(num_layers, num_nodes, -1).sum(-1)
    local = node_load.max(-1).values <= (1 + locality_tolerance) * node_load.mean(-1)
    nodemajor_to_log = ((position_group * group_size).unsqueeze(-1)
                        + torch.arange(group_size, device=weight.device)).view(num_layers, num_logical)
    return nodemajor_to_log, local


def node_placement(weight: torch.Tensor, nodemajor_to_log: torch.Tensor, num_replicas: int, num_nodes: int,
                   num_gpus: int, rounds: int) -> tuple[torch.Tensor, ...]:
    """Each node's experts get the node's slots: place_rows inside every node.

    Args:
        weight: [L, E]; nodemajor_to_log: [L, E], see groups_to_nodes.
    Returns:
        phy2log, rank: [L, num_replicas]; logcnt: [L, E].
    """
    num_layers, num_logical = weight.shape
    experts_per_node = num_logical // num_nodes
    node_weight = weight.gather(1, nodemajor_to_log).view(num_layers * num_nodes, experts_per_node)
    local_phy, rank, local_cnt = place_rows(node_weight, num_replicas // num_nodes, num_gpus // num_nodes, rounds)
    node_offset = (torch.arange(num_nodes, device=weight.device) * experts_per_node).repeat(num_layers).unsqueeze(-1)
    phy2log = nodemajor_to_log.gather(1, (local_phy + node_offset).view(num_layers, num_replicas))
    logcnt = torch.empty_like(nodemajor_to_log).scatter_(1, nodemajor_to_log, local_cnt.view(num_layers, -1))
    return phy2log, rank.view(num_layers, num_replicas), logcnt


def counts_of(phy2log: torch.Tensor, num_logical: int) -> torch.Tensor:
    """phy2log: [L, R] -> logcnt: [L, num_logical]."""
    logcnt = torch.zeros(phy2log.shape[0], num_logical, dtype=torch.int64, device=phy2log.device)
    return logcnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))


def peak_gpu_load(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """[L] maximum GPU load of each layer's placement under weight [L, E]."""
    slot_load = (weight / logcnt.clamp(min=1)).gather(1, phy2log)
    return slot_load.view(weight.shape[0], num_gpus, -1).sum(-1).max(-1).values


def match_bins(overlap: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """Pair new bins with old bins so that paired bins share much (a greedy matching).

    In each round every unpaired new bin proposes to the free old bin it shares most
    with, and every old bin accepts its best proposal (ties to the lower new bin);
    after `rounds` rounds the rest pair up in index order.

    Args:
        overlap: [B, K, K] float, overlap[b, new, old] >= 0, in multiples of 1/2.
    Returns:
        [B, K] int64: the old bin paired with each new bin (a permutation per row).
    """
    rows, size, _ = overlap.shape
    device = overlap.device
    new_ids = torch.arange(size, device=device)
    paired = torch.full((rows, size), -1, dtype=torch.int64, device=device)
    taken = torch.zeros(rows, size, dtype=torch.bool, device=device)
    for _ in range(rounds):
        open_new = paired < 0
        score = overlap.masked_fill(taken.unsqueeze(1) | ~open_new.unsqueeze(2), -1.0)
        value, choice = score.max(-1)
        bid = torch.where(open_new & (value >= 0), (2 * value).round() * size + (size - 1 - new_ids),
                          torch.full_like(value, -1.0))
        best_bid = torch.full_like(bid, -1.0).scatter_reduce(1, choice, bid, "amax")
        won = (bid >= 0) & (best_bid.gather(1, choice) == bid)
        paired = torch.where(won, choice, paired)
        taken = taken | torch.zeros_like(paired).scatter_reduce(1, choice, won.to(torch.int64), "amax").bool()
    left_new = paired < 0
    free_old = ascending_order(taken.to(torch.int8), 2)              # free old bins first, in order
    rank = (left_new.cumsum(-1) - 1).clamp(min=0)
    return torch.where(left_new, free_old.gather(1, rank), paired)


def follow_previous_labels(phy2log: torch.Tensor, prev_phy2log: torch.Tensor, num_logical: int, num_nodes: int,
                           num_gpus: int) -> torch.Tensor:
    """Renumber the nodes, then the GPUs inside each node, so that each holds as many
    of the experts it held before as possible. Loads and locality are unchanged:
    nodes are interchangeable, and so are the GPUs of a node.

    Args:
        phy2log, prev_phy2log: [L, R].
    Returns:
        [L, R]: phy2log with whole nodes and GPUs moved to new numbers.
    """
    num_layers, num_replicas = phy2log.shape
    gpus_per_node = num_gpus // num_nodes
    if num_nodes > 1:
        overlap = shared_replicas(phy2log, prev_phy2log, num_logical, num_nodes)
        phy2log = move_blocks(phy2log, match_bins(overlap.view(num_layers, num_nodes, num_nodes)), num_nodes)
    if gpus_per_node > 1:
        overlap = shared_replicas(phy2log, prev_phy2log, num_logical, num_gpus, within=num_nodes)
        pairing = match_bins(overlap.view(num_layers * num_nodes, gpus_per_node, gpus_per_node))
        phy2log = move_blocks(phy2log.reshape(num_layers * num_nodes, -1), pairing, gpus_per_node)
    return phy2log.reshape(num_layers, num_replicas)


def shared_replicas(phy2log: torch.Tensor, prev_phy2log: torch.Tensor, num_logical: int, num_bins: int,
                    within: int = 1) -> torch.Tensor:
    """How many replicas of each new bin sit in each old bin, compared only within
    the same block of num_bins / within bins (nodes, when bins are GPUs).

    An expert counts as sitting in the first and the last old bin that held it
    (exact for up to two copies), and each bin gets half a replica of credit for
    keeping its number.

    Args:
        phy2log, prev_phy2log: [L, R].
    Returns:
        [L * within, k * k] float, k = num_bins / within: entry new * k + old.
    """
    num_layers, num_replicas = phy2log.shape
    device = phy2log.device
    per_bin, per_block = num_replicas // num_bins, num_bins // within
    # Integer division of big tensors is slow: divide the small index tables instead.
    bins = torch.arange(num_bins, device=device)
    # One more entry, at index num_bins (= -1), for experts the old placement lacks.
    block_of_bin = torch.cat([bins // per_block, bins.new_full((1,), -1)])
    local_of_bin = torch.cat([bins % per_block, bins.new_zeros(1)])
    bin_of_slot = bins.repeat_interleave(per_bin)
    slot_cell = block_of_bin[bin_of_slot] * per_block ** 2 + local_of_bin[bin_of_slot] * per_block
    slot_block = block_of_bin[bin_of_slot]
    slot_bins = bin_of_slot.expand(num_layers, -1)
    unheld = torch.full((num_layers, num_logical), num_bins, dtype=torch.int64, device=device)
    first = unheld.scatter_reduce(1, prev_phy2log, slot_bins, "amin").gather(1, phy2log)
    last = (unheld - num_bins - 1).scatter_reduce(1, prev_phy2log, slot_bins, "amax").gather(1, phy2log)
    overlap = torch.zeros(num_layers, within * per_block ** 2, device=device)
    overlap.scatter_add_(1, slot_cell + local_of_bin[first], (block_of_bin[first] == slot_block).float())
    overlap.scatter_add_(1, slot_cell + local_of_bin[last], ((block_of_bin[last] == slot_block) & (last != first)).float())
    overlap = overlap.view(num_layers * within, per_block, per_block)
    return (overlap + 0.5 * torch.eye(per_block, device=device)).view(num_layers * within, -1)


def move_blocks(values: torch.Tensor, destination: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """values: [B, m] as num_blocks equal blocks; block i moves to block destination[:, i]."""
    rows, width = values.shape
    blocks = values.view(rows, num_blocks, width // num_blocks)
    target = destination.unsqueeze(-1).expand_as(blocks)
    return torch.empty_like(blocks).scatter_(1, target, blocks).view(rows, width)


def keep_slots(phy2log: torch.Tensor, prev_phy2log: torch.Tensor, num_logical: int, num_gpus: int) -> torch.Tensor:
    """Reorder the slots inside each GPU so that a replica of an expert the GPU held
    before takes that expert's previous slot (vLLM's preserve_intragpu_slots).

    The old and the new replicas are sorted together by (GPU, expert), old ones
    first and each in slot order, so that the i-th new copy of an expert on a GPU
    meets the i-th old one. The other new replicas fill the GPU's remaining slots in
    order.

    Args:
        phy2log, prev_phy2log: [L, R].
    Returns:
        [L, R]: on every GPU the same replicas as phy2log.
    """
    num_layers, num_replicas = phy2log.shape
    per_gpu = num_replicas // num_gpus
    if per_gpu == 1:
        return phy2log
    device = phy2log.device
    slot_key = torch.arange(num_gpus, device=device).repeat_interleave(per_gpu) * num_logical
    both = torch.cat([prev_phy2log + slot_key, phy2log + slot_key], 1)       # old: columns < R
    order = ascending_order(both, num_gpus * num_logical)
    key = both.gather(1, order)
    is_old = order < num_replicas
    positions = torch.arange(2 * num_replicas, device=device)
    run_start = torch.where(torch.cat([torch.ones_like(key[:, :1], dtype=torch.bool), key[:, 1:] != key[:, :-1]], 1),
                            positions, 0).cummax(-1).values
    old_seen = is_old.cumsum(-1)
    old_in_run = old_seen - (old_seen - is_old.long()).gather(1, run_start)   # at a new entry: all of the run's old ones
    new_rank = positions - run_start - old_in_run
    matched = ~is_old & (new_rank < old_in_run)
    partner = order.gather(1, torch.where(matched, run_start + new_rank, 0))
    # Kept replicas, by new slot: their old slot, else -1.
    kept_at = torch.empty_like(order).scatter_(1, order, torch.where(matched, partner, -1))[:, num_replicas:]
    kept_new = kept_at >= 0
    kept_old = torch.zeros(num_layers, num_replicas + 1, dtype=torch.bool, device=device)
    kept_old = kept_old.scatter_(1, torch.where(matched, partner, num_replicas), True)[:, :num_replicas]
    # The i-th new replica that moves takes the i-th free slot: per GPU the counts agree.
    free = ~kept_old
    slots = torch.arange(num_replicas, device=device).expand(num_layers, -1)
    free_slots = torch.empty(num_layers, num_replicas + 1, dtype=torch.int64, device=device)
    free_slots = free_slots.scatter_(1, torch.where(free, free.cumsum(-1) - 1, num_replicas), slots)
    fill_rank = ((~kept_new).cumsum(-1) - 1).clamp(min=0)
    target = torch.where(kept_new, kept_at, free_slots.gather(1, fill_rank))
    return torch.empty_like(phy2log).scatter_(1, target, phy2log)


def copy_rank(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """[L, R]: how many slots before each slot hold the same expert."""
    num_layers, num_replicas = phy2log.shape
    slots = torch.arange(num_replicas, device=phy2log.device)
    by_expert = ascending_order(phy2log, logcnt.shape[1])
    rank = slots - (logcnt.cumsum(-1) - logcnt).gather(1, phy2log.gather(1, by_expert))
    return torch.empty_like(rank).scatter_(1, by_expert, rank)


def repair_previous(weight: torch.Tensor, prev_phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int,
                    rounds: int) -> torch.Tensor:
    """The previous placement changed as little as possible to serve `weight`.

    Each expert keeps up to its new count of its old slots; the freed slots take the
    missing replicas, the heaviest on the GPU that kept least load; then swap rounds
    on the new loads.

    Args:
        weight: [L, E]; prev_phy2log: [L, R]; logcnt: [L, E], the new counts.
    Returns:
        [L, R] phy2log with the counts logcnt.
    """
    num_layers, num_replicas = prev_phy2log.shape
    num_logical = weight.shape[1]
    prev_cnt = counts_of(prev_phy2log, num_logical)
    keep = copy_rank(prev_phy2log, prev_cnt) < logcnt.gather(1, prev_phy2log)
    missing = replica_experts((logcnt - prev_cnt).clamp(min=0), num_replicas).clamp(max=num_logical - 1)
    # Experts the node no longer holds have count 0; they are never placed.
    per_replica = weight / logcnt.clamp(min=1)
    kept_load = (per_replica.gather(1, prev_phy2log) * keep).view(num_layers, num_gpus, -1).sum(-1)
    slot_gpu = torch.arange(num_replicas, device=weight.device) // (num_replicas // num_gpus)
    # Freed slots first, those of lightly loaded GPUs first; missing replicas heaviest first.
    slot_key = kept_load[:, slot_gpu] + keep * (2 * kept_load.sum(-1, keepdim=True) + 1)
    freed = descending_order(slot_key.max(-1, keepdim=True).values - slot_key)
    num_freed = (~keep).sum(-1, keepdim=True)
    first = torch.arange(num_replicas, device=weight.device) < num_freed
    missing_load = torch.where(first, per_replica.gather(1, missing), -1.0)
    missing = missing.gather(1, descending_order(missing_load.clamp(min=0) + first))
    filled = torch.where(first, missing, prev_phy2log.gather(1, freed))
    repaired = prev_phy2log.scatter(1, freed, filled)
    order = refine_by_swaps(per_replica.gather(1, repaired), torch.arange(num_replicas, device=weight.device)
                            .expand(num_layers, -1).contiguous(), num_gpus, rounds, pairs=REPAIR_PAIRS)
    return repaired.gather(1, order)


def repair_in_nodes(weight: torch.Tensor, prev_phy2log: torch.Tensor, fresh: torch.Tensor, num_nodes: int,
                    num_gpus: int, rounds: int) -> torch.Tensor:
    """repair_previous inside every node, towards the experts and counts that the
    new placement `fresh` gives the node, so that the layer's policy holds.

    Args:
        weight: [L, E]; prev_phy2log, fresh: [L, R], fresh already renumbered to
        follow prev_phy2log.
    Returns:
        [L, R] phy2log with fresh's counts on every node.
    """
    num_layers, num_replicas = fresh.shape
    rows = num_layers * num_nodes
    node_fresh = fresh.reshape(rows, num_replicas // num_nodes)
    node_counts = counts_of(node_fresh, weight.shape[1])
    node_weight = weight.repeat_interleave(num_nodes, dim=0)
    repaired = repair_previous(node_weight, prev_phy2log.reshape(rows, -1), node_counts, num_gpus // num_nodes, rounds)
    return repaired.reshape(num_layers, num_replicas)


def listed_slots(phy2log: torch.Tensor, rank: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy: [L, E, X] from phy2log and each slot's copy number rank [L, R].

    X is logcnt.max() on the CPU; on CUDA it is R - E + 1, the most any expert can
    hold, so that no call waits for the device to report the maximum.
    """
    num_layers, num_replicas = phy2log.shape
    num_logical = logcnt.shape[1]
    width = int(logcnt.max()) if phy2log.device.type == "cpu" else num_replicas - num_logical + 1
    log2phy = torch.full((num_layers, num_logical * width), -1, dtype=torch.int64, device=phy2log.device)
    slots = torch.arange(num_replicas, device=phy2log.device).expand(num_layers, -1)
    return log2phy.scatter_(1, phy2log * width + rank, slots).view(num_layers, num_logical, width)


def slots_of_experts(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy: [L, E, X], each expert's slots in increasing order, -1 padded (X as in listed_slots)."""
    return listed_slots(phy2log, copy_rank(phy2log, logcnt), logcnt)


def plan_layers(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                locality_tolerance: float, rounds: int, node_rounds: int) -> tuple[torch.Tensor, ...]:
    """The new placement, without regard to the old one; `rounds` swap rounds in the
    global policy, `node_rounds` where the scenario allows the hierarchical one.

    There a layer whose groups stay whole on nodes is placed node by node, and any
    other layer as in the global policy, its replicas packed over all GPUs at once.
    Returns:
        phy2log, rank: [L, R]; logcnt: [L, E]; local: [L] bool, True where whole
        groups stay on nodes.
    """
    num_layers = weight.shape[0]
    if not (num_nodes > 1 and num_groups % num_nodes == 0) or locality_tolerance == SPREAD_ALWAYS:
        return (*place_rows(weight, num_replicas, num_gpus, rounds),
                torch.zeros(num_layers, dtype=torch.bool, device=weight.device))
    nodemajor_to_log, local = groups_to_nodes(weight, num_groups, num_nodes, locality_tolerance)
    if weight.device.type != "cpu":  # both plans for every layer: no data-dependent branch on CUDA
        in_nodes = node_placement(weight, nodemajor_to_log, num_replicas, num_nodes, num_gpus, node_rounds)
        spread = place_rows(weight, num_replicas, num_gpus, node_rounds)
        return (*(torch.where(local.unsqueeze(-1), a, b) for a, b in zip(in_nodes, spread)), local)
    kept = local.nonzero().squeeze(1)
    if kept.numel() == num_layers:
        return (*node_placement(weight, nodemajor_to_log, num_replicas, num_nodes, num_gpus, node_rounds), local)
    spread_layers = (~local).nonzero().squeeze(1)
    planned = place_rows(weight.index_select(0, spread_layers), num_replicas, num_gpus, node_rounds)
    if kept.numel() == 0:
        return (*planned, local)
    in_nodes = node_placement(weight.index_select(0, kept), nodemajor_to_log.index_select(0, kept),
                              num_replicas, num_nodes, num_gpus, node_rounds)
    merged = tuple(torch.empty((num_layers, *a.shape[1:]), dtype=a.dtype).index_copy_(0, kept, a)
                   .index_copy_(0, spread_layers, b) for a, b in zip(in_nodes, planned))
    return (*merged, local)


def fewer_moves(weight: torch.Tensor, prev_phy2log: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor,
                local: torch.Tensor, num_nodes: int, num_gpus: int, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the placement with the fewest moves whose peak GPU load is within
    `tolerance` of the new placement's: the previous placement itself, else the
    previous one repaired (inside nodes where groups stay on nodes), else the new one.

    Args:
        weight: [L, E]; prev_phy2log, phy2log: [L, R], phy2log already renumbered
        to follow the previous placement; logcnt: [L, E]; local: [L].
    Returns:
        phy2log: [L, R]; logcnt: [L, E].
    """
    num_logical = weight.shape[1]
    bound = (1 + tolerance) * peak_gpu_load(weight, phy2log, logcnt, num_gpus)
    repaired = repair_in_nodes(weight, prev_phy2log, phy2log, 1, num_gpus, REPAIR_ROUNDS)
    if bool(local.any()):
        in_nodes = repair_in_nodes(weight, prev_phy2log, phy2log, num_nodes, num_gpus, REPAIR_ROUNDS)
        repaired = torch.where(local.unsqueeze(-1), in_nodes, repaired)
    phy2log = keep_slots(phy2log, prev_phy2log, num_logical, num_gpus)
    better = ((peak_gpu_load(weight, repaired, logcnt, num_gpus) <= bound)
              & ((repaired != prev_phy2log).sum(-1) < (phy2log != prev_phy2log).sum(-1)))
    phy2log = torch.where(better.unsqueeze(-1), repaired, phy2log)
    prev_cnt = counts_of(prev_phy2log, num_logical)
    keep = (prev_cnt > 0).all(-1) & (peak_gpu_load(weight, prev_phy2log, prev_cnt, num_gpus) <= bound)
    if bool(local.any()):
        keep &= ~local | same_groups_on_nodes(prev_phy2log, phy2log, num_logical, num_nodes)
    return (torch.where(keep.unsqueeze(-1), prev_phy2log, phy2log),
            torch.where(keep.unsqueeze(-1), prev_cnt, logcnt))


def same_groups_on_nodes(prev_phy2log: torch.Tensor, phy2log: torch.Tensor, num_logical: int,
                         num_nodes: int) -> torch.Tensor:
    """[L] bool: every node holds the same experts in both placements."""
    num_layers = phy2log.shape[0]
    held = torch.zeros(2, num_layers, num_nodes, num_logical, dtype=torch.bool, device=phy2log.device)
    for index, placement in enumerate((prev_phy2log, phy2log)):
        held[index].scatter_(2, placement.view(num_layers, num_nodes, -1), True)
    return (held[0] == held[1]).flatten(1).all(-1)


@register("fast", description="all layers at once in array code, CPU and CUDA; per-layer policy; migration-aware",
          devices=("cpu", "cuda"))
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, *, prev_phy2log=None,
                      locality_tolerance=LOCALITY_TOLERANCE, migration_tolerance=None, rounds=None):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract.

    Args:
        prev_phy2log: [num_layers, num_replicas], the placement in service, or None.
            Nodes and GPUs of the new placement are renumbered to keep as many
            experts where they were as possible, and replicas that stay on a GPU
            keep their slots.
        locality_tolerance: a layer keeps whole groups on nodes while its heaviest
            node is at most this fraction above the mean node load.
        migration_tolerance: None (default), or a fraction: then a layer keeps its
            previous placement, else takes the previous one repaired, when its peak
            GPU load is at most this fraction above the new placement's. Each
            layer's balance drops by at most that much; moves drop a lot.
        rounds: at most this many swap rounds in each packing. By default
            REFINE_ROUNDS in the global policy and NODE_REFINE_ROUNDS inside the
            nodes of the hierarchical one, or NO_REDUNDANCY_ROUNDS in both when
            there are no extra slots (single heavy experts then need swaps to even
            out). Inside nodes the sorted rounds stand alone: swaps there fit the
            planning window better and the next one worse (docs/fast.md).
    """
    num_logical = weight.shape[1]
    w = weight.detach().to(torch.float32).clamp(min=0) + 0.0  # + 0.0 turns -0.0 into 0.0
    redundant = num_replicas > num_logical
    node_rounds = rounds if rounds is not None else NODE_REFINE_ROUNDS if redundant else NO_REDUNDANCY_ROUNDS
    if rounds is None:
        rounds = REFINE_ROUNDS if redundant else NO_REDUNDANCY_ROUNDS
    phy2log, rank, logcnt, local = plan_layers(w, num_replicas, num_groups, num_nodes, num_gpus, locality_tolerance,
                                               rounds, node_rounds)
    if prev_phy2log is None:
        return phy2log, listed_slots(phy2log, rank, logcnt), logcnt
    prev = torch.as_tensor(prev_phy2log, device=w.device)
    if (prev.is_floating_point() or prev.is_complex() or prev.shape != phy2log.shape
            or bool(((prev < 0) | (prev >= num_logical)).any())):
        raise ValueError(f"prev_phy2log must be [{phy2log.shape[0]}, {num_replicas}] integer expert indices in "
                         f"[0, {num_logical}); got {prev.dtype} of shape {tuple(prev.shape)}")
    prev = prev.to(torch.int64).contiguous()
    unchanged = (phy2log == prev).all(-1, keepdim=True)
    phy2log = torch.where(unchanged, prev, follow_previous_labels(phy2log, prev, num_logical, num_nodes, num_gpus))
    if migration_tolerance is not None:
        phy2log, logcnt = fewer_moves(w, prev, phy2log, logcnt, local, num_nodes, num_gpus, migration_tolerance)
    phy2log = keep_slots(phy2log, prev, num_logical, num_gpus)
    return phy2log, slots_of_experts(phy2log, logcnt), logcnt


@register("fast_spread", description="fast with every layer spread over all GPUs: balance before dispatch locality",
          devices=("cpu", "cuda"))
def rebalance_experts_spread(weight, num_replicas, num_groups, num_nodes, num_gpus, *, prev_phy2log=None,
                             migration_tolerance=None):
    """fast with no expert group kept whole on a node: every layer's replicas are
    packed over all GPUs, which balances better and sends more tokens across nodes
    (internode_share). Arguments as in rebalance_experts."""
    return rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=prev_phy2log,
                             locality_tolerance=SPREAD_ALWAYS, migration_tolerance=migration_tolerance)
