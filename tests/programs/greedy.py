"""An honest, self-contained balancer in the program-file form that `eplb-bench
evaluate` scores: replicas go one at a time to the expert with the largest load per
replica, then each layer's replicas are dealt, heaviest first, to the least loaded
GPU that still has a free slot. It takes both optional keywords: a layer whose
replica counts match the placement in service (`prev_phy2log`), and which that
placement balances within 1% as well, keeps it, so fewer replicas migrate; `report`
gets the number of layers kept. It imports
nothing but torch."""

import heapq

import torch


def replica_counts(weight: torch.Tensor, num_replicas: int) -> torch.Tensor:
    """weight: [L, E] -> logcnt [L, E], each row summing to num_replicas."""
    layers, experts = weight.shape
    logcnt = torch.ones(layers, experts, dtype=torch.int64)
    rows = torch.arange(layers)
    load = weight.double()
    for _ in range(num_replicas - experts):
        hottest = (load / logcnt).argmax(-1)
        logcnt[rows, hottest] += 1
    return logcnt


def place(weight: torch.Tensor, logcnt: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """weight, logcnt: [L, E] -> phy2log [L, R]: replicas dealt to GPUs by load."""
    layers, experts = weight.shape
    num_replicas = int(logcnt[0].sum())
    per_gpu = num_replicas // num_gpus
    phy2log = torch.empty(layers, num_replicas, dtype=torch.int64)
    for layer in range(layers):
        experts_of = torch.repeat_interleave(torch.arange(experts), logcnt[layer])
        shares = (weight[layer].double() / logcnt[layer])[experts_of]
        order = shares.argsort(descending=True)
        open_gpus = [(0.0, gpu) for gpu in range(num_gpus)]   # (load, gpu) of GPUs with a free slot
        filled = [0] * num_gpus
        slots = []
        for share in shares[order].tolist():
            load, gpu = heapq.heappop(open_gpus)
            slots.append(gpu * per_gpu + filled[gpu])
            filled[gpu] += 1
            if filled[gpu] < per_gpu:
                heapq.heappush(open_gpus, (load + share, gpu))
        phy2log[layer, torch.tensor(slots)] = experts_of[order]
    return phy2log


def peak_gpu_load(weight: torch.Tensor, logcnt: torch.Tensor, phy2log: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """weight, logcnt: [L, E]; phy2log: [L, R] -> [L] load of each layer's busiest GPU."""
    shares = (weight.double() / logcnt).gather(-1, phy2log)
    return shares.view(phy2log.shape[0], num_gpus, -1).sum(-1).max(-1).values


def slot_lists(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """phy2log [L, R], logcnt [L, E] -> log2phy [L, E, max count], padded with -1."""
    layers, num_replicas = phy2log.shape
    log2phy = torch.full((layers, logcnt.shape[1], int(logcnt.max())), -1, dtype=torch.int64)
    order = phy2log.argsort(dim=-1, stable=True)          # slots grouped by expert
    expert = phy2log.gather(-1, order)
    first = (torch.cumsum(logcnt, -1) - logcnt).gather(-1, expert)   # where each expert's run starts
    rank = torch.arange(num_replicas) - first
    log2phy[torch.arange(layers)[:, None], expert, rank] = order
    return log2phy


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None, report=None):
    logcnt = replica_counts(weight, num_replicas)
    phy2log = place(weight, logcnt, num_gpus)
    kept = 0
    if prev_phy2log is not None:
        previous_counts = torch.zeros_like(logcnt).scatter_add_(1, prev_phy2log, torch.ones_like(prev_phy2log))
        # Keep a layer's placement in service when it has the same counts and its
        # busiest GPU carries at most 1% more than the new placement's.
        keep = (previous_counts == logcnt).all(-1) & \
            (peak_gpu_load(weight, logcnt, prev_phy2log, num_gpus) <= 1.01 * peak_gpu_load(weight, logcnt, phy2log, num_gpus))
        phy2log[keep] = prev_phy2log[keep]
        kept = int(keep.sum())
    if report is not None:
        report["kept_layers"] = kept
    return phy2log, slot_lists(phy2log, logcnt), logcnt
