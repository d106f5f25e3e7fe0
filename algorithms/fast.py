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

Steps 1-3 are written once against two array libraries: a CPU call runs them on
NumPy arrays, whose operations cost a few microseconds at these sizes where torch's
CPU operations cost several times more (docs/fast.md), and a CUDA call runs the same
functions on torch tensors, never waiting for the device when there is no
prev_phy2log (no data-dependent branch; log2phy is R - E + 1 wide). The small
helpers below are the only places that tell the two apart. Step 4 is torch on both.
"""

from __future__ import annotations

import functools

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

Array = np.ndarray | torch.Tensor


# --- the two array libraries: every difference between NumPy and torch lives here ---

def as_torch(a: Array) -> torch.Tensor:
    """a as a torch tensor (a NumPy array's memory is shared)."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def waits_for_device(a: Array) -> bool:
    """True where reading a value back to Python would wait for an accelerator."""
    return isinstance(a, torch.Tensor) and a.device.type != "cpu"


def arange(n: int, like: Array) -> Array:
    """[n] int64 0, 1, ..., n - 1 in like's library (and on its device)."""
    return np.arange(n) if isinstance(like, np.ndarray) else torch.arange(n, device=like.device)


def constant(values: np.ndarray, like: Array) -> Array:
    """A NumPy array moved to like's library and device."""
    return values if isinstance(like, np.ndarray) else torch.tensor(values, device=like.device)


def full(shape: tuple[int, ...], value, like: Array) -> Array:
    """An array of like's dtype, filled with value."""
    if isinstance(like, np.ndarray):
        return np.full(shape, value, dtype=like.dtype)
    return torch.full(shape, value, dtype=like.dtype, device=like.device)


def as_float(a: Array) -> Array:
    """a as float32."""
    return a.astype(np.float32, copy=False) if isinstance(a, np.ndarray) else a.to(torch.float32)


def as_index(a: Array) -> Array:
    """a as int64."""
    return a.astype(np.int64, copy=False) if isinstance(a, np.ndarray) else a.to(torch.int64)


def where(condition: Array, a: Array, b) -> Array:
    """Elementwise a where condition, else b (an array or a scalar of a's type)."""
    if isinstance(a, np.ndarray):
        return np.where(condition, a, b)
    return torch.where(condition, a, b)


def row_max(a: Array) -> Array:
    """a: [B, n] -> [B], each row's maximum."""
    return a.max(-1) if isinstance(a, np.ndarray) else a.amax(-1)


def row_min(a: Array) -> Array:
    """a: [..., n] -> [...], the minimum over the last axis."""
    return a.min(-1) if isinstance(a, np.ndarray) else a.amin(-1)


def flip(a: Array) -> Array:
    """a with its last axis reversed."""
    return a[..., ::-1] if isinstance(a, np.ndarray) else a.flip(-1)


def row_offsets(a: Array) -> Array:
    """a: [B, n] -> [B, 1] int64, the flat index of each row's first entry."""
    return arange(a.shape[0], a).reshape(-1, 1) * a.shape[1]


def take(a: Array, index: Array) -> Array:
    """a: [B, n], index: [B, m] -> [B, m] with entry [b, j] = a[b, index[b, j]].

    NumPy takes from the flat array: several times cheaper than take_along_axis.
    """
    if isinstance(a, np.ndarray):
        return a.reshape(-1)[index + row_offsets(a)]
    return a.gather(1, index)


def put(a: Array, index: Array, values) -> Array:
    """a[b, index[b, j]] = values[b, j] in place (indices distinct within a row); returns a.

    a: [B, n] contiguous; values: [B, m] or a scalar.
    """
    if isinstance(a, np.ndarray):
        a.reshape(-1)[index + row_offsets(a)] = values
        return a
    return a.scatter_(1, index, values)


def broadcast(a: Array, shape: tuple[int, ...]) -> Array:
    """A read-only view of a broadcast to shape."""
    return np.broadcast_to(a, shape) if isinstance(a, np.ndarray) else a.expand(shape)


def maximum(a: Array, b: Array) -> Array:
    """Elementwise maximum."""
    return np.maximum(a, b) if isinstance(a, np.ndarray) else torch.maximum(a, b)


def add_at(a: Array, index: Array, values: Array) -> Array:
    """a[b, index[b, j]] += values[b, j] in place, repeated indices adding up; returns a."""
    if isinstance(a, np.ndarray):
        flat = (index + row_offsets(a)).reshape(-1)
        a += np.bincount(flat, weights=values.reshape(-1), minlength=a.size).reshape(a.shape).astype(a.dtype)
        return a
    return a.scatter_add_(1, index, values)


def rows_of(a: Array, rows: Array) -> Array:
    """a: [B, ...], rows: [k] int64 -> [k, ...]."""
    return a[rows] if isinstance(a, np.ndarray) else a.index_select(0, rows)


def set_rows(a: Array, rows: Array, values: Array) -> Array:
    """a[rows] = values in place; returns a."""
    if isinstance(a, np.ndarray):
        a[rows] = values
        return a
    return a.index_copy_(0, rows, values)


def true_rows(mask: Array) -> Array:
    """mask: [B] bool -> [k] int64, the rows where it holds (reads the mask: CPU only)."""
    return np.flatnonzero(mask) if isinstance(mask, np.ndarray) else mask.nonzero().squeeze(1)


def inverse(permutation: Array) -> Array:
    """permutation: [B, n], each row a permutation -> [B, n], its inverse."""
    positions = broadcast(arange(permutation.shape[1], permutation).reshape(1, -1), permutation.shape)
    return put(full(permutation.shape, 0, permutation), permutation, positions)


def sorted_rows(keys: Array) -> Array:
    """keys: [B, n] int64 -> each row sorted ascending (NumPy sorts in place)."""
    if isinstance(keys, np.ndarray):
        keys.sort(axis=-1)
        return keys
    return torch.sort(keys, dim=-1).values


def order_of_keys(keys: Array) -> Array:
    """keys: [B, n] int64 in [0, 2**31), overwritten on the CPU -> [B, n] int64 indices,
    smallest key first, ties by index: each key is packed with its index so that a
    plain sort is stable."""
    if isinstance(keys, np.ndarray):
        np.left_shift(keys, 32, out=keys)
        np.bitwise_or(keys, np.arange(keys.shape[-1]), out=keys)
    else:
        keys = (keys << 32) | torch.arange(keys.shape[-1], device=keys.device)
    return sorted_rows(keys) & 0xFFFFFFFF


def float_bits(values: Array) -> Array:
    """values: non-negative floats -> int64 keys in [0, 2**31) that order as the float32 values do."""
    if isinstance(values, np.ndarray):
        return np.ascontiguousarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return values.float().contiguous().view(torch.int32).to(torch.int64)


def float_of_bits(bits: Array) -> Array:
    """The inverse of float_bits: int64 keys in [0, 2**31) -> float32 values."""
    if isinstance(bits, np.ndarray):
        return bits.astype(np.int32).view(np.float32)
    return bits.to(torch.int32).view(torch.float32)


def on_numpy(function):
    """Run a function of one torch CPU tensor through NumPy (tests and step 4 call
    the planning helpers with torch tensors; torch's CPU sorts are the slow part)."""
    @functools.wraps(function)
    def wrapper(values, *args):
        if isinstance(values, torch.Tensor) and not waits_for_device(values):
            return torch.from_numpy(function(values.numpy(), *args))
        return function(values, *args)
    return wrapper


@on_numpy
def descending_order(values: Array) -> Array:
    """values: [B, n], non-negative -> [B, n] int64 indices, largest first, ties by index.

    Values are compared as float32, by one sort of keys that pack each with its index.
    """
    bits = float_bits(values)
    return order_of_keys(0x7FFFFFFF - bits)


@on_numpy
def largest_first(values: Array, count: int, ordered: bool = True) -> Array:
    """values: [B, n], non-negative -> [B, count] int64: the indices of the count
    largest values, ties to the lower index; largest first when `ordered`, else in
    no particular order. As descending_order(values)[:, :count], with a partial sort."""
    keys = float_bits(values)
    keys = 0x7FFFFFFF - keys
    if isinstance(keys, np.ndarray):
        np.left_shift(keys, 32, out=keys)
        np.bitwise_or(keys, np.arange(keys.shape[-1]), out=keys)
        if count < keys.shape[-1]:
            keys = np.partition(keys, count - 1, axis=-1)[:, :count]
        if ordered:
            keys.sort(axis=-1)
        return np.bitwise_and(keys, 0xFFFFFFFF, out=keys)
    keys = (keys << 32) | torch.arange(keys.shape[-1], device=keys.device)
    return torch.topk(keys, count, dim=-1, largest=False, sorted=ordered).values & 0xFFFFFFFF


@on_numpy
def lightest_first(loads: Array) -> Array:
    """loads: [B, k], non-negative -> [B, k] int64 indices, smallest load first, ties by index.

    Values are compared as float32 on both libraries. Short rows take a stable argsort.
    """
    if loads.shape[-1] <= 32:
        if isinstance(loads, np.ndarray):
            return np.argsort(loads.astype(np.float32, copy=False), axis=-1, kind="stable")
        return loads.float().argsort(dim=-1, stable=True)
    return order_of_keys(float_bits(loads))


@on_numpy
def ascending_order(values: Array, bound: int) -> Array:
    """values: [B, n] integers in [0, bound) -> [B, n] int64 indices, smallest first,
    ties by index (a stable sort); small integers go through NumPy's radix sort."""
    if isinstance(values, np.ndarray):
        if bound <= 2 ** 15:
            return np.argsort(values.astype(np.int16), axis=-1, kind="stable")
        return order_of_keys(values.astype(np.int64))
    return torch.sort(values, dim=-1, stable=True).indices


# --- steps 1-3 ---

@functools.lru_cache(maxsize=256)
def candidate_table(grants: int, num_items: int, fresh: bool) -> np.ndarray:
    """[2, k] int64: the rank of the expert and the number of replicas it already won
    for every candidate replica that top_replicas has to compare."""
    reach = min(grants, num_items)
    steps_of_rank = grants // np.arange(1, reach + 1) if fresh else np.full(reach, grants)
    rank = np.repeat(np.arange(reach), steps_of_rank)
    step = np.arange(len(rank)) - np.repeat(np.cumsum(steps_of_rank) - steps_of_rank, steps_of_rank)
    table = np.stack([rank, step])
    table.flags.writeable = False
    return table


def grant(counts: Array, expert: Array, priority: Array, grants: int) -> Array:
    """counts: [B, n] float32; expert, priority: [B, k], candidate replicas -> [B, n]
    counts plus one replica for each of the `grants` highest priorities (ties to the
    earlier candidate)."""
    winners = take(expert, largest_first(priority, grants, False))
    counts = counts.copy() if isinstance(counts, np.ndarray) else counts.clone()
    return add_at(counts, winners, full(winners.shape, 1, counts))


def top_replicas(weight: Array, counts: Array, grants: int, beta: float, fresh: bool) -> Array:
    """Grant the `grants` highest replica priorities of every row.

    The next replica of an expert holding c replicas has priority weight / (c - beta).
    Only a few candidates can win: rank the experts by their next priority; the
    (t+1)-th next replica of the expert ranked r can only be granted if every
    better-ranked expert got its first one, so r < grants, and, when every expert
    holds one replica (`fresh`), if they all got t + 1, so (r + 1)(t + 1) <= grants.
    One small sort of those candidates decides.

    Args:
        weight: [B, n] float32; counts: [B, n] float32, current counts.
    Returns:
        [B, n] float32 counts with the grants added; ties go to the better-ranked expert.
    """
    if grants <= 0:
        return counts
    rank, step = constant(candidate_table(grants, weight.shape[1], fresh), weight)
    expert = largest_first(weight / (counts - beta), min(grants, weight.shape[1]))[:, rank]
    return grant(counts, expert, take(weight, expert) / (take(counts, expert) + (as_float(step) - beta)), grants)


def replica_counts(weight: Array, num_slots: int, num_bins: int) -> Array:
    """Replica counts by Sainte-Laguë (the next replica of an expert with c has priority
    weight / (c - 1/2)), except in rows where that would raise the floor of the peak
    bin load, max(mean bin load, heaviest replica): there D'Hondt (weight / c), which
    makes the heaviest replica as light as it can be. Both as top_replicas would give
    them from one replica each.

    Sainte-Laguë hands replicas to more experts than D'Hondt and plans better for the
    next window wherever replicas are small next to a bin's share (see docs/fast.md);
    with few slots per bin a heavy replica sets the peak, and D'Hondt's lighter one wins.

    Args:
        weight: [B, n] float32, rows with positive sums; num_slots >= n.
    Returns:
        [B, n] int64 counts, each row summing to num_slots.
    """
    ones = full(weight.shape, 1.0, weight)
    num_extra = num_slots - weight.shape[1]
    if num_extra <= 0:
        return as_index(ones)
    # From one replica each, weight / (1 - beta) ranks the experts as weight does under
    # both rules (dividing by 1 or by 1/2 is exact): one ranking, one set of candidates.
    rank, step = constant(candidate_table(num_extra, weight.shape[1], True), weight)
    expert = largest_first(weight, min(num_extra, weight.shape[1]))[:, rank]
    candidate_weight = take(weight, expert)
    later = as_float(step)
    counts = grant(ones, expert, candidate_weight / (1.0 + (later - SAINTE_LAGUE)), num_extra)
    mean_bin = weight.sum(-1) / num_bins
    heavy = row_max(weight / counts) > mean_bin
    # D'Hondt only where Sainte-Laguë's heaviest replica is above the mean bin: those
    # rows on the CPU; every row on CUDA, where picking rows would wait for the device.
    rows = arange(weight.shape[0], weight) if waits_for_device(weight) else true_rows(heavy)
    if rows.shape[0] == 0:
        return as_index(counts)
    part, chosen = rows_of(weight, rows), rows_of(counts, rows)
    dhondt = grant(rows_of(ones, rows), rows_of(expert, rows), rows_of(candidate_weight, rows) / (1.0 + (later - 0.0)),
                   num_extra)
    floor_dhondt = maximum(row_max(part / dhondt), rows_of(mean_bin, rows))
    raised = rows_of(heavy, rows) & (row_max(part / chosen) > floor_dhondt)
    return as_index(set_rows(counts, rows, where(raised.reshape(-1, 1), dhondt, chosen)))


def deal_sorted(ranked: Array, num_bins: int) -> Array:
    """Sorted rounds: round r deals items r * num_bins onwards (heaviest first), the
    heaviest to the lightest bin so far (ties to the lower bin); round 0 gives bin b
    item b.

    Each round sorts keys that pack a bin's float32 load with its number, so that the
    sort carries the bins along and the loads come back out of the keys.

    Args:
        ranked: [B, m] non-negative item loads, heaviest first; m a multiple of num_bins.
    Returns:
        [B, m] int64: the item (a column of ranked) at each position; bin b holds
        positions b * (m / num_bins) onwards.
    """
    rows, num_items = ranked.shape
    per_bin = num_items // num_bins
    rounds = ranked.reshape(rows, per_bin, num_bins)
    bin_at = [broadcast(arange(num_bins, ranked).reshape(1, -1), (rows, num_bins))]   # bin taking each item
    keys = (float_bits(rounds[:, 0]) << 32) | bin_at[0]
    for step in range(1, per_bin):
        keys = sorted_rows(keys)
        bin_at.append(keys & 0xFFFFFFFF)
        if step + 1 < per_bin:
            keys = (float_bits(float_of_bits(keys >> 32) + rounds[:, step]) << 32) | bin_at[-1]
    stack = np.stack if isinstance(ranked, np.ndarray) else torch.stack
    rounds_index = arange(per_bin, ranked).reshape(1, per_bin, 1)
    position = (stack(bin_at, 1) * per_bin + rounds_index).reshape(rows, num_items)
    items = broadcast(arange(num_items, ranked).reshape(1, -1), (rows, num_items))
    return put(full((rows, num_items), 0, position), position, items)


def refine_by_swaps(item_loads: Array, position_item: Array, num_bins: int, rounds: int,
                    pairs: int = PAIRS_PER_ROUND) -> Array:
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
    position_item = position_item.copy() if isinstance(position_item, np.ndarray) else position_item.clone()
    first_bin = arange(rows, item_loads).reshape(-1, 1) * num_bins
    for _ in range(rounds):
        placed = take(item_loads, position_item).reshape(rows * num_bins, per_bin)
        bin_load = placed.sum(-1).reshape(rows, num_bins)
        order = lightest_first(bin_load)
        light_bins, heavy_bins = order[:, :half], flip(order[:, num_bins - half:])
        light, heavy = placed[light_bins + first_bin], placed[heavy_bins + first_bin]    # [B, half, per_bin]
        half_gap = (take(bin_load, heavy_bins) - take(bin_load, light_bins)) / 2
        # Moving d = a - b from the heavy bin to the light one helps iff 0 < d < gap
        # and leaves |gap - 2d| = 2 |(a - gap / 2) - b| between them.
        score = abs((heavy - half_gap.reshape(rows, half, 1)).reshape(rows, half, per_bin, 1)
                    - light.reshape(rows, half, 1, per_bin)).reshape(rows, half, per_bin * per_bin)
        choice = score.argmin(-1)
        useful = row_min(score) < half_gap
        if not waits_for_device(useful) and not bool(useful[:, 0].any()):
            break
        src = heavy_bins * per_bin + choice // per_bin
        dst = light_bins * per_bin + choice % per_bin
        at_src, at_dst = take(position_item, src), take(position_item, dst)
        put(position_item, src, where(useful, at_dst, at_src))
        put(position_item, dst, where(useful, at_src, at_dst))
    return position_item


def expand(values: Array, counts: Array, width: int) -> Array:
    """values, counts: [B, n], each row of counts summing to width -> [B, width],
    each value repeated counts times, in order."""
    rows = values.shape[0]
    if isinstance(values, np.ndarray):
        return np.repeat(values.reshape(-1), counts.reshape(-1)).reshape(rows, width)
    return values.reshape(-1).repeat_interleave(counts.reshape(-1), output_size=rows * width).reshape(rows, width)


def replica_experts(counts: Array, num_slots: int) -> Array:
    """counts: [B, n] non-negative, summing to num_slots -> [B, num_slots], the expert
    of each replica, replicas of one expert adjacent."""
    return expand(broadcast(arange(counts.shape[1], counts).reshape(1, -1), counts.shape), counts, num_slots)


def place_rows(weight: Array, num_slots: int, num_bins: int, rounds: int) -> tuple[Array, ...]:
    """The global policy on each row: replica counts, sorted rounds, swap rounds.

    Args:
        weight: [B, n] float32, non-negative.
    Returns:
        phy2log: [B, num_slots], the expert of each slot (bin b holds slots
        b * num_slots / num_bins onwards); rank: [B, num_slots], the copy number of
        each slot's expert (0 for its first slot); counts: [B, n] int64.
    """
    usable = where(weight.sum(-1).reshape(-1, 1) > 0, weight, full((1, 1), 1.0, weight))
    counts = replica_counts(usable, num_slots, num_bins)
    per_replica = usable / as_float(counts)
    # Experts by replica load, then each one's replicas: replicas heaviest first, ties
    # by expert, as a sort of the replicas themselves would order them.
    heaviest = descending_order(per_replica)
    ranked_counts = take(counts, heaviest)
    replica_expert = expand(heaviest, ranked_counts, num_slots)
    ranked = expand(take(per_replica, heaviest), ranked_counts, num_slots)
    copy_number = arange(num_slots, weight).reshape(1, -1) - expand(ranked_counts.cumsum(-1) - ranked_counts,
                                                                      ranked_counts, num_slots)
    position = refine_by_swaps(ranked, deal_sorted(ranked, num_bins), num_bins, rounds)
    return take(replica_expert, position), take(copy_number, position), counts


def groups_to_nodes(weight: Array, num_groups: int, num_nodes: int,
                    locality_tolerance: float) -> tuple[Array, Array]:
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
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(-1)
    heaviest_first = descending_order(group_load)
    position_group = take(heaviest_first, deal_sorted(take(group_load, heaviest_first), num_nodes))
    if num_groups > 2 * num_nodes:  # with two groups per node the rounds pair optimally
        position_group = refine_by_swaps(group_load, position_group, num_nodes, NO_REDUNDANCY_ROUNDS)
    node_load = take(group_load, position_group).reshape(num_layers, num_nodes, -1).sum(-1)
    local = row_max(node_load) <= (1 + locality_tolerance) * node_load.mean(-1)
    nodemajor_to_log = ((position_group * group_size).reshape(num_layers, num_groups, 1)
                        + arange(group_size, weight).reshape(1, 1, -1)).reshape(num_layers, num_logical)
    return nodemajor_to_log, local


def node_placement(weight: Array, nodemajor_to_log: Array, num_replicas: int, num_nodes: int,
                   num_gpus: int, rounds: int) -> tuple[Array, ...]:
    """Each node's experts get the node's slots: place_rows inside every node.

    Args:
        weight: [L, E]; nodemajor_to_log: [L, E], see groups_to_nodes.
    Returns:
        phy2log, rank: [L, num_replicas]; logcnt: [L, E].
    """
    num_layers, num_logical = weight.shape
    experts_per_node = num_logical // num_nodes
    node_weight = take(weight, nodemajor_to_log).reshape(num_layers * num_nodes, experts_per_node)
    local_phy, rank, local_cnt = place_rows(node_weight, num_replicas // num_nodes, num_gpus // num_nodes, rounds)
    node_offset = (arange(num_layers * num_nodes, weight) % num_nodes * experts_per_node).reshape(-1, 1)
    phy2log = take(nodemajor_to_log, (local_phy + node_offset).reshape(num_layers, num_replicas))
    logcnt = put(full(nodemajor_to_log.shape, 0, nodemajor_to_log), nodemajor_to_log,
                 local_cnt.reshape(num_layers, -1))
    return phy2log, rank.reshape(num_layers, num_replicas), logcnt


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
    missing_cnt = (logcnt - prev_cnt).clamp(min=0)
    # One more expert, past the last, takes the slots left over (the clamp drops it).
    padded = torch.cat([missing_cnt, num_replicas - missing_cnt.sum(-1, keepdim=True)], 1)
    missing = replica_experts(padded, num_replicas).clamp(max=num_logical - 1)
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


def listed_slots(phy2log: Array, rank: Array, logcnt: Array) -> Array:
    """log2phy: [L, E, X] from phy2log and each slot's copy number rank [L, R].

    X is logcnt.max() on the CPU; on CUDA it is R - E + 1, the most any expert can
    hold, so that no call waits for the device to report the maximum.
    """
    num_layers, num_replicas = phy2log.shape
    num_logical = logcnt.shape[1]
    width = num_replicas - num_logical + 1 if waits_for_device(phy2log) else int(logcnt.max())
    log2phy = full((num_layers, num_logical * width), -1, phy2log)
    slots = broadcast(arange(num_replicas, phy2log).reshape(1, -1), phy2log.shape)
    return put(log2phy, phy2log * width + rank, slots).reshape(num_layers, num_logical, width)


def slots_of_experts(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy: [L, E, X], each expert's slots in increasing order, -1 padded (X as in listed_slots)."""
    return listed_slots(phy2log, copy_rank(phy2log, logcnt), logcnt)


def plan_layers(weight: Array, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                locality_tolerance: float, rounds: int, node_rounds: int) -> tuple[Array, ...]:
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
        return (*place_rows(weight, num_replicas, num_gpus, rounds), full((num_layers,), 0, weight) > 0)
    nodemajor_to_log, local = groups_to_nodes(weight, num_groups, num_nodes, locality_tolerance)
    if waits_for_device(weight):  # both plans for every layer: no data-dependent branch on CUDA
        in_nodes = node_placement(weight, nodemajor_to_log, num_replicas, num_nodes, num_gpus, node_rounds)
        spread = place_rows(weight, num_replicas, num_gpus, node_rounds)
        return (*(where(local.reshape(-1, 1), a, b) for a, b in zip(in_nodes, spread)), local)
    kept = true_rows(local)
    if kept.shape[0] == num_layers:
        return (*node_placement(weight, nodemajor_to_log, num_replicas, num_nodes, num_gpus, node_rounds), local)
    spread_layers = true_rows(~local)
    planned = place_rows(rows_of(weight, spread_layers), num_replicas, num_gpus, node_rounds)
    if kept.shape[0] == 0:
        return (*planned, local)
    in_nodes = node_placement(rows_of(weight, kept), rows_of(nodemajor_to_log, kept),
                              num_replicas, num_nodes, num_gpus, node_rounds)
    merged = tuple(set_rows(set_rows(full((num_layers, *a.shape[1:]), 0, a), kept, a), spread_layers, b)
                   for a, b in zip(in_nodes, planned))
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
    w = weight.detach().to(torch.float32)
    # Steps 1-3 on NumPy arrays on the CPU, on torch tensors elsewhere; clamp, and
    # + 0.0 turns -0.0 into 0.0.
    w = np.maximum(w.numpy(), 0) + 0.0 if w.device.type == "cpu" else w.clamp(min=0) + 0.0
    redundant = num_replicas > num_logical
    node_rounds = rounds if rounds is not None else NODE_REFINE_ROUNDS if redundant else NO_REDUNDANCY_ROUNDS
    if rounds is None:
        rounds = REFINE_ROUNDS if redundant else NO_REDUNDANCY_ROUNDS
    planned = plan_layers(w, num_replicas, num_groups, num_nodes, num_gpus, locality_tolerance, rounds, node_rounds)
    if prev_phy2log is None:
        phy2log, rank, logcnt, _ = planned
        return tuple(as_torch(a) for a in (phy2log, listed_slots(phy2log, rank, logcnt), logcnt))
    w, phy2log, _, logcnt, local = (as_torch(a) for a in (w, *planned))
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

