"""Loads and metrics of a placement under the evaluators' load model.

Load model (shared by every public evaluator): an expert's load is split evenly
over its replicas, so a slot holding expert e carries weight[e] / logcnt[e].
Everything here is array code over all layers at once, in float64.
"""

from __future__ import annotations

import torch


def slot_loads(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """weight: [num_layers, num_logical], phy2log: [num_layers, num_replicas],
    logcnt: [num_layers, num_logical] -> [num_layers, num_replicas] load of each slot."""
    per_replica = weight.double() / logcnt.to(weight.device).double()
    return per_replica.gather(1, phy2log.to(weight.device))


def group_sums(loads: torch.Tensor, num_bins: int) -> torch.Tensor:
    """loads: [num_layers, n] -> [num_layers, num_bins], sums of consecutive blocks."""
    return loads.view(loads.shape[0], num_bins, -1).sum(-1)


def gpu_loads(slot_load: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """slot_load: [num_layers, num_replicas] -> [num_layers, num_gpus]."""
    return group_sums(slot_load, num_gpus)


def node_loads(slot_load: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """slot_load: [num_layers, num_replicas] -> [num_layers, num_nodes]."""
    return group_sums(slot_load, num_nodes)


def peak_gpu_load(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """weight: [num_layers, num_logical], phy2log: [num_layers, num_replicas],
    logcnt: [num_layers, num_logical] -> [num_layers], the most loaded GPU's load:
    what a layer's step waits for, and what the lower bounds bound."""
    return gpu_loads(slot_loads(weight, phy2log, logcnt), num_gpus).max(-1).values


def balancedness(loads: torch.Tensor) -> float:
    """loads: [num_layers, n] -> sum over layers of mean / sum over layers of max.

    1.0 is perfect balance. A window with no load at all counts as balanced.
    """
    peak = float(loads.max(-1).values.sum())
    if peak <= 0.0:
        return 1.0
    return float(loads.mean(-1).sum()) / peak


def internode_share(
    weight: torch.Tensor,
    phy2log: torch.Tensor,
    logcnt: torch.Tensor,
    num_nodes: int,
    top_k: int = 8,
    routing_groups: int = 1,
    topk_groups: int = 1,
) -> float:
    """Estimated share of a token's expert dispatches that cross nodes, counting
    one send per destination node (dispatch kernels send a token once per node).

    Model: tokens start evenly spread over the nodes; a token picks `topk_groups` of
    `routing_groups` contiguous expert groups, group g with probability in
    proportion to its load, then top_k / topk_groups experts inside each, each
    landing on node n with the share of the group's load placed there. The sends of
    one chosen group are de-duplicated by node, those of different groups are not.
    With one group per node and group-limited routing a token reaches at most
    topk_groups nodes; spreading a group's experts over nodes reaches more.

    Args:
        weight: [num_layers, num_logical]; phy2log: [num_layers, num_replicas];
        logcnt: [num_layers, num_logical].
    Returns:
        remote sends per token / top_k, in [0, (num_nodes - 1) / num_nodes].
    """
    num_layers, num_logical = weight.shape
    total = weight.double().sum(-1)
    if num_nodes == 1 or float(total.sum()) <= 0.0:
        return 0.0
    remote = layer_remote_shares(weight, phy2log, logcnt, num_nodes, top_k, routing_groups, topk_groups)
    busy = total > 0
    return float((remote * total)[busy].sum() / total[busy].sum())


def layer_remote_shares(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_nodes: int,
                        top_k: int = 8, routing_groups: int = 1, topk_groups: int = 1) -> torch.Tensor:
    """[num_layers]: each layer's remote sends per token-expert pair under
    internode_share's model (its docstring); slots in node-major order, R / N per node.

    weight: [num_layers, num_logical]; phy2log: [num_layers, num_replicas]; logcnt: [num_layers, num_logical].
    """
    num_layers, num_replicas = phy2log.shape
    node_of_slot = (torch.arange(num_replicas, device=weight.device) * num_nodes // num_replicas).expand(num_layers, -1)
    return remote_shares(slot_loads(weight, phy2log, logcnt), phy2log.to(weight.device), node_of_slot,
                         weight.shape[1], num_nodes, top_k, routing_groups, topk_groups)


def remote_shares(slot_load: torch.Tensor, expert_of_slot: torch.Tensor, node_of_slot: torch.Tensor, num_logical: int,
                  num_nodes: int, top_k: int, routing_groups: int, topk_groups: int) -> torch.Tensor:
    """slot_load, expert_of_slot, node_of_slot: [L, S] -> [L] remote sends per pair
    (internode_share's model) for slots on any nodes; 0 for a layer without load."""
    num_layers = slot_load.shape[0]
    if num_nodes == 1:
        return torch.zeros(num_layers, dtype=torch.float64, device=slot_load.device)
    group_of_slot = expert_of_slot // (num_logical // routing_groups)
    flat = (node_of_slot * routing_groups + group_of_slot).reshape(num_layers, -1)
    on_node = torch.zeros(num_layers, num_nodes * routing_groups, dtype=torch.float64, device=slot_load.device)
    on_node = on_node.scatter_add_(1, flat, slot_load.double()).view(num_layers, num_nodes, routing_groups)  # [L, N, G]
    group_load = on_node.sum(1)                                         # [L, G]
    share = on_node / group_load.clamp(min=1e-300).unsqueeze(1)
    picks = top_k / topk_groups
    nodes_reached = (1 - (1 - share).pow(picks)).sum(1)                # [L, G] per chosen group
    total = slot_load.double().sum(-1)
    sends = topk_groups * (group_load * nodes_reached).sum(-1) / total.clamp(min=1e-300)
    return sends * (num_nodes - 1) / num_nodes / top_k


def placement_metrics(
    weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int, num_nodes: int
) -> dict[str, float]:
    """Balance of one placement on one load window.

    Args:
        weight: [num_layers, num_logical]; phy2log: [num_layers, num_replicas];
        logcnt: [num_layers, num_logical].
    Returns:
        balancedness_gpu, balancedness_slot and balancedness_node.
    """
    slots = slot_loads(weight, phy2log, logcnt)
    return {
        "balancedness_gpu": balancedness(gpu_loads(slots, num_gpus)),
        "balancedness_slot": balancedness(slots),
        "balancedness_node": balancedness(node_loads(slots, num_nodes)),
    }


def bound_metrics(weight: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int,
                  lower_bound: torch.Tensor) -> dict[str, float]:
    """How a placement compares with proven lower bounds on the peak GPU load.

    Args:
        weight: [num_layers, num_logical]; phy2log: [num_layers, num_replicas];
        logcnt: [num_layers, num_logical]; lower_bound: [num_layers], positive where
        the layer has load.
    Returns:
        balancedness_ceiling: sum of mean GPU loads / sum of bounds, the best GPU
        balancedness any placement could reach; optimality_gap: sum of peaks / sum
        of bounds - 1 (0 means proven optimal).
    """
    bound = float(lower_bound.double().sum())
    if bound <= 0.0:
        return {"balancedness_ceiling": 1.0, "optimality_gap": 0.0}
    mean_load = float(weight.double().sum()) / num_gpus
    return {
        "balancedness_ceiling": mean_load / bound,
        "optimality_gap": float(peak_gpu_load(weight, phy2log, logcnt, num_gpus).sum()) / bound - 1.0,
    }
