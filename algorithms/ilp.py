"""ilp: every layer placed by MILP (scipy.optimize.milp, HiGHS), within a time limit.

Under the evaluators' load model (eplb_bench.bounds.solver): replica counts and the GPU of
every replica are chosen together; where the scenario has DeepSeek's hierarchical
policy, whole groups stay on one node. Slow by nature: it runs only when named.

Per layer:
1. The best of three heuristic placements, `fast` (keeping groups on nodes where the
   policy asks for it), `deepseek` and `refined_packing`, gives a valid placement and
   its peak, which bounds the counts worth trying. scipy's milp takes no starting
   solution, so the heuristic one is kept whenever the solver's is not better.
2. The MILP with free counts, when it has at most `max_variables` integer
   variables; else the MILP of the assignment alone, for fast's counts.
3. The solver's placement when it has one at least as good; else the heuristic one.
   (A layer whose heuristic peak already equals a closed-form lower bound skips 2.)

The `report` keyword, when given a dict, receives per call: the policy, how many
layers were proven optimal, stopped at the time limit, kept the heuristic start or
used fixed counts, and the largest and mean gap to the best lower bound known (the
simple bounds, and the solver's dual bound where counts were free).
"""

from __future__ import annotations

import numpy as np
import torch

from eplb_bench import register
from eplb_bench.bounds.solver import MAX_VARIABLES, hierarchical_applies, model_variables, simple_bounds, solve_layer

from .deepseek import rebalance_experts as deepseek_placement
from .fast import rebalance_experts as fast_placement
from .fast import slots_of_experts
from .refined_packing import rebalance_experts as refined_placement

TIME_LIMIT = 5.0


def gpu_peaks(weight: np.ndarray, phy2log: np.ndarray, logcnt: np.ndarray, num_gpus: int) -> np.ndarray:
    """weight: [L, E]; phy2log: [L, R]; logcnt: [L, E] -> [L] heaviest GPU load."""
    slot_load = np.take_along_axis(weight / np.maximum(logcnt, 1), phy2log, 1)
    return slot_load.reshape(weight.shape[0], num_gpus, -1).sum(-1).max(-1)


def groups_on_one_node(phy2log: np.ndarray, num_logical: int, num_groups: int, num_nodes: int) -> np.ndarray:
    """phy2log: [L, R] -> [L] bool, whether every group's replicas all sit on one node."""
    layers, slots = phy2log.shape
    node = np.broadcast_to(np.arange(slots) // (slots // num_nodes), phy2log.shape)
    group = phy2log // (num_logical // num_groups)
    first = np.full((layers, num_groups), -1)
    first[np.arange(layers)[:, None], group] = node
    return (first[np.arange(layers)[:, None], group] == node).all(-1)


def best_heuristic_start(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                         num_gpus: int, hierarchical: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight: [L, E] float64 -> per layer the lowest-peak valid start.

    Returns:
        phy2log: [L, R], logcnt: [L, E], peaks: [L].
    """
    loads = weight.numpy()
    candidates = [fast_placement(weight.float(), num_replicas, num_groups, num_nodes, num_gpus,
                                 locality_tolerance=1e30),
                  deepseek_placement(weight, num_replicas, num_groups, num_nodes, num_gpus),
                  refined_placement(weight, num_replicas, num_groups, num_nodes, num_gpus)]
    phy2log = np.stack([c[0].numpy() for c in candidates])
    logcnt = np.stack([c[2].numpy() for c in candidates])
    peaks = np.stack([gpu_peaks(loads, p, c, num_gpus) for p, c in zip(phy2log, logcnt)])
    if hierarchical:
        keeps = np.stack([groups_on_one_node(p, loads.shape[1], num_groups, num_nodes) for p in phy2log])
        peaks = np.where(keeps, peaks, np.inf)
    best = peaks.argmin(0)
    layers = np.arange(loads.shape[0])
    return phy2log[best, layers].copy(), logcnt[best, layers].copy(), peaks[best, layers]


@register("ilp", description="exact per-layer MILP (scipy/HiGHS) within a time limit; slow, runs only when named",
          slow=True)
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, *, time_limit=TIME_LIMIT,
                      max_variables=MAX_VARIABLES, report=None):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract.

    Args:
        time_limit: seconds of solver time per layer.
        max_variables: the largest free-count model handed to the solver.
        report: None, or a dict that receives the solver's outcome (module docstring).
    """
    device = weight.device
    w = weight.detach().to("cpu", torch.float64)
    policy = "hierarchical" if hierarchical_applies(num_groups, num_nodes) else "global"
    loads = w.numpy()
    phy2log, logcnt, peaks = best_heuristic_start(w, num_replicas, num_groups, num_nodes, num_gpus,
                                                  policy == "hierarchical")
    lower = np.max(np.stack(list(simple_bounds(loads, num_replicas, num_groups, num_nodes, num_gpus,
                                               policy).values())), 0)
    outcome = {"optimal": 0, "time_limit": 0, "kept_heuristic": 0, "fixed_counts": 0}
    gaps = []
    for layer in range(loads.shape[0]):
        if peaks[layer] <= lower[layer] * (1 + 1e-12):   # the start already meets a proven bound
            outcome["optimal"] += 1
            gaps.append(0.0)
            continue
        counts_free = model_variables(loads[layer], num_replicas, num_gpus, upper=peaks[layer]) <= max_variables
        solution = solve_layer(loads[layer], num_replicas, num_gpus, time_limit, num_groups=num_groups,
                               num_nodes=num_nodes, policy=policy, upper=peaks[layer] if counts_free else None,
                               counts=None if counts_free else logcnt[layer])
        outcome["fixed_counts"] += not counts_free
        outcome["optimal" if solution.status == "optimal" else "time_limit"] += 1
        if solution.gpu_experts is not None and solution.objective <= peaks[layer]:
            phy2log[layer], logcnt[layer], peaks[layer] = solution.gpu_experts.ravel(), solution.counts, solution.objective
        else:
            outcome["kept_heuristic"] += 1
        if counts_free and solution.dual_bound is not None:
            lower[layer] = max(lower[layer], solution.dual_bound)
        gaps.append(peaks[layer] / lower[layer] - 1 if lower[layer] > 0 else 0.0)
    if report is not None:
        report.update(policy=policy, time_limit_s=time_limit, layers=loads.shape[0], **outcome,
                      max_gap=float(max(gaps)), mean_gap=float(np.mean(gaps)))
    phy2log_t, logcnt_t = torch.from_numpy(phy2log), torch.from_numpy(logcnt)
    return phy2log_t.to(device), slots_of_experts(phy2log_t, logcnt_t).to(device), logcnt_t.to(device)
