"""DeepSeek's EPLB pipeline with pluggable steps, shared by the seed's balancers.

The pipeline (deepseek-ai/EPLB, eplb.py): pack whole expert groups onto nodes,
replicate experts inside each node, pack the replicas onto the node's GPUs. When
the groups do not divide over the nodes, the same pipeline runs with one group and
one node (the global policy). Balancers differ only in the three steps, given as:

    pack(weight: [X, n], num_packs) -> (pack_index: [X, n], rank_in_pack: [X, n])
        each pack receives exactly n / num_packs items;
    replicate(weight: [X, num_log], num_phy) -> (phy2log: [X, num_phy],
        replica_rank: [X, num_phy], logcnt: [X, num_log]).
"""

from __future__ import annotations

import heapq
from typing import Callable, NamedTuple

import torch

PackFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
ReplicateFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Steps(NamedTuple):
    pack_groups: PackFn
    replicate: ReplicateFn
    pack_replicas: PackFn


def one_item_per_pack(rows: int, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packing when every pack takes one item, as the reference gives it: item i in
    pack i. Returns pack_index, rank_in_pack: [rows, num_items]."""
    index = torch.arange(num_items, dtype=torch.int64).expand(rows, num_items).clone()
    return index, torch.zeros(rows, num_items, dtype=torch.int64)


def heaviest_first_unfilled(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight: [X, n] -> (order: [X, n] items heaviest first, ties by index; pack_index and
    rank_in_pack: [X, n] filled with -1), the start of both greedy packings."""
    order = weight.float().sort(dim=-1, descending=True, stable=True).indices
    unfilled = torch.full(weight.shape, -1, dtype=torch.int64)
    return order, unfilled, unfilled.clone()


def greedy_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's balanced packing: heaviest item first onto the lightest non-full pack.

    Args:
        weight: [X, n] item weights (CPU); n must be a multiple of num_packs.
    Returns:
        pack_index: [X, n] pack of each item; rank_in_pack: [X, n] its position there.
    """
    rows, num_items = weight.shape
    capacity = num_items // num_packs
    if capacity == 1:
        return one_item_per_pack(rows, num_items)
    order, pack_index, rank_in_pack = heaviest_first_unfilled(weight)
    # Item by item with tensor element access and float32 pack loads, as the reference
    # does. The reference scans every pack for the lightest open one (scan_packing); a
    # heap of (load, pack) makes the same choice (lowest load, ties to the lowest index)
    # in O(log packs).
    for row in range(rows):
        loads = [0] * num_packs
        counts = [0] * num_packs
        open_packs = [(0.0, pack) for pack in range(num_packs)]
        for item in order[row]:
            _, pack = heapq.heappop(open_packs)
            pack_index[row, item] = pack
            rank_in_pack[row, item] = counts[pack]
            loads[pack] = loads[pack] + weight[row, item]
            counts[pack] += 1
            if counts[pack] < capacity:
                heapq.heappush(open_packs, (float(loads[pack]), pack))
    return pack_index, rank_in_pack


def scan_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """greedy_packing exactly as the reference computes it, at the reference's cost.

    The same choices as greedy_packing, but each item scans every open pack for the
    lightest, with pack loads kept as float32 tensor elements, as deepseek-ai/EPLB's
    balanced_packing does: O(packs) Python steps per item, so that runtimes measured
    against it compare with published speedups over the reference.

    Args:
        weight: [X, n] item weights (CPU); n must be a multiple of num_packs.
    Returns:
        pack_index: [X, n] pack of each item; rank_in_pack: [X, n] its position there.
    """
    rows, num_items = weight.shape
    capacity = num_items // num_packs
    if capacity == 1:
        return one_item_per_pack(rows, num_items)
    order, pack_index, rank_in_pack = heaviest_first_unfilled(weight)
    for row in range(rows):
        loads = [0] * num_packs
        counts = [0] * num_packs
        for item in order[row]:
            pack = min((p for p in range(num_packs) if counts[p] < capacity), key=loads.__getitem__)
            pack_index[row, item] = pack
            rank_in_pack[row, item] = counts[pack]
            loads[pack] = loads[pack] + weight[row, item]
            counts[pack] += 1
    return pack_index, rank_in_pack


def greedy_replication(
    weight: torch.Tensor, num_phy: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepSeek's replication: each extra slot goes to the largest weight / count.

    Args:
        weight: [X, num_log]; num_phy >= num_log slots in all.
    Returns:
        phy2log: [X, num_phy]; replica_rank: [X, num_phy]; logcnt: [X, num_log].
    """
    rows, num_log = weight.shape
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(rows, 1)
    replica_rank = torch.zeros(rows, num_phy, dtype=torch.int64)
    logcnt = torch.ones(rows, num_log, dtype=torch.int64)
    row_ids = torch.arange(rows)
    for slot in range(num_log, num_phy):
        hottest = (weight / logcnt).max(-1).indices
        phy2log[:, slot] = hottest
        replica_rank[:, slot] = logcnt[row_ids, hottest]
        logcnt[row_ids, hottest] += 1
    return phy2log, replica_rank, logcnt


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """perm: [X, n], a permutation per row -> its inverse, [X, n]."""
    inverse = torch.empty_like(perm)
    positions = torch.arange(perm.shape[1], dtype=torch.int64).expand_as(perm)
    return inverse.scatter_(1, perm, positions)


def hierarchical_placement(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    steps: Steps,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups to nodes, replicas within nodes, replicas to GPUs.

    Args:
        weight: [num_layers, num_logical] float, on the CPU.
    Returns:
        phy2log: [num_layers, num_replicas]; replica_rank: [num_layers, num_replicas];
        logcnt: [num_layers, num_logical].
    """
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_logical // num_nodes
    slots_per_node = num_replicas // num_nodes
    slots_per_gpu = num_replicas // num_gpus

    # Step 1: whole groups onto nodes. "Node-major" numbers the experts node by node.
    group_load = weight.view(num_layers, num_groups, group_size).sum(-1)
    group_node, group_rank = steps.pack_groups(group_load, num_nodes)
    group_start = (group_node * groups_per_node + group_rank) * group_size
    log_to_nodemajor = (group_start.unsqueeze(-1) + torch.arange(group_size)).flatten(1)
    nodemajor_to_log = inverse_permutation(log_to_nodemajor)

    # Step 2: replicas inside each node, one row per (layer, node).
    node_weight = weight.gather(1, nodemajor_to_log).view(-1, experts_per_node)
    phy_to_local, replica_rank, local_count = steps.replicate(node_weight, slots_per_node)

    # Step 3: the node's replicas onto its GPUs.
    replica_load = (node_weight / local_count).gather(1, phy_to_local)
    gpu, rank_on_gpu = steps.pack_replicas(replica_load, num_gpus // num_nodes)
    slot_to_phy = inverse_permutation(gpu * slots_per_gpu + rank_on_gpu)

    node_offset = (torch.arange(num_nodes) * experts_per_node).view(1, num_nodes, 1)
    slot_nodemajor = phy_to_local.gather(1, slot_to_phy).view(num_layers, num_nodes, -1) + node_offset
    phy2log = nodemajor_to_log.gather(1, slot_nodemajor.flatten(1))
    slot_rank = replica_rank.gather(1, slot_to_phy).view(num_layers, -1)
    logcnt = local_count.view(num_layers, -1).gather(1, log_to_nodemajor)
    return phy2log, slot_rank, logcnt


def slots_by_expert(phy2log: torch.Tensor, replica_rank: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """log2phy: [num_layers, num_logical, logcnt.max()], slot of each replica, -1 padded."""
    num_layers, num_replicas = phy2log.shape
    width = int(logcnt.max())
    log2phy = torch.full((num_layers, logcnt.shape[1] * width), -1, dtype=torch.int64)
    slots = torch.arange(num_replicas, dtype=torch.int64).expand(num_layers, -1)
    log2phy.scatter_(1, phy2log * width + replica_rank, slots)
    return log2phy.view(num_layers, -1, width)


def rebalance_with(
    steps: Steps,
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract's rebalance_experts, computed on the CPU with the given steps.

    Hierarchical when num_groups % num_nodes == 0, else global (one group, one node).
    Outputs are returned on the device of `weight`.
    """
    device = weight.device
    cpu_weight = weight.detach().float().cpu()
    if num_groups % num_nodes == 0:
        placement = hierarchical_placement(cpu_weight, num_replicas, num_groups, num_nodes, num_gpus, steps)
    else:
        placement = hierarchical_placement(cpu_weight, num_replicas, 1, 1, num_gpus, steps)
    phy2log, replica_rank, logcnt = placement
    log2phy = slots_by_expert(phy2log, replica_rank, logcnt)
    return phy2log.to(device), log2phy.to(device), logcnt.to(device)
