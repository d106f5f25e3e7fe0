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


def balancedness(loads: torch.Tensor) -> float:
    """loads: [num_layers, n] -> sum over layers of mean / sum over layers of max.

    1.0 is perfect balance. A window with no load at all counts as balanced.
    """
    peak = float(loads.max(-1).values.sum())
    if peak <= 0.0:
        return 1.0
    return float(loads.mean(-1).sum()) / peak


def internode_share(weight: torch.Tensor, phy2log: torch.Tensor, num_nodes: int) -> float:
    """Estimated share of routed tokens that cross nodes.

    Model: every expert's tokens start evenly spread over the nodes (data-parallel
    attention), and a token goes to a replica on its own node when one exists, else
    to another node. The share is therefore the load-weighted fraction of nodes that
    hold no replica of the expert.

    Args:
        weight: [num_layers, num_logical]; phy2log: [num_layers, num_replicas].
    """
    num_layers, num_logical = weight.shape
    slots_by_node = phy2log.to(weight.device).view(num_layers, num_nodes, -1)
    present = torch.zeros(num_layers, num_nodes, num_logical, dtype=torch.bool, device=weight.device)
    present.scatter_(2, slots_by_node, True)
    nodes_without = num_nodes - present.sum(1).double()
    total = float(weight.double().sum())
    if total <= 0.0:
        return 0.0
    return float((weight.double() * nodes_without).sum()) / (num_nodes * total)


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
