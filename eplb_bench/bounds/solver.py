"""Lower bounds on a layer's peak GPU load, and its exact placement by MILP.

The load model is the public evaluators': an expert with c replicas puts weight / c
on each of them; every GPU has num_replicas / num_gpus slots; every expert has at
least one replica. A placement's peak is its heaviest GPU load.

Two policies, and what a bound proves under each:
- "global": the bound is at most the peak of *every* valid placement of the
  scenario (any replica counts, any GPU for any replica). It holds for every
  balancer, whatever it does with groups.
- "hierarchical": the bound is at most the peak of every placement that keeps each
  expert group whole on one node, num_groups / num_nodes groups per node, the
  node's experts sharing the node's num_replicas / num_nodes slots (DeepSeek's
  hierarchical policy). It can exceed the global bound, and says nothing about
  balancers that spread groups.

The exact MILP (`solve_layer`) chooses the replica counts and the GPU of every
replica together; `fixed counts` solves only the assignment for given counts, and
its optimum is optimal for those counts alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from eplb_bench.core.contract import hierarchical_applies  # noqa: F401  (the one rule; re-exported)

POLICIES = ("global", "hierarchical")
SOLVER = f"scipy.optimize.milp (HiGHS), scipy {scipy.__version__}"
# Models with more integer variables than this are not handed to the solver by default.
MAX_VARIABLES = 20000
# Equal splits of groups over nodes up to this many are enumerated; more go to the MILP.
MAX_SPLITS = 20000


def mean_bound(weight: np.ndarray, num_gpus: int) -> np.ndarray:
    """weight: [L, E] -> [L], the mean GPU load: some GPU carries at least that."""
    return weight.sum(-1) / num_gpus


def replica_bound(weight: np.ndarray, num_slots: int) -> np.ndarray:
    """weight: [L, E] -> [L], the smallest heaviest replica any choice of counts allows.

    Exact: with counts c_e >= 1 summing to num_slots, the heaviest replica is
    max_e w_e / c_e, and its minimum is the (extra + 1)-th largest of the values
    w_e / k (1 <= k <= extra + 1), extra = num_slots - E: giving the extra replicas
    one by one to the expert with the heaviest replica (D'Hondt) takes the extra
    largest of them. Some GPU holds that replica, so the peak is at least it.
    """
    num_layers, num_experts = weight.shape
    extra = num_slots - num_experts
    if extra < 0:
        raise ValueError(f"{num_slots} slots cannot hold {num_experts} experts")
    quotients = (weight[:, :, None] / np.arange(1, extra + 2)).reshape(num_layers, -1)
    return -np.partition(-quotients, extra, axis=-1)[:, extra]


def equal_splits(num_groups: int, num_nodes: int) -> np.ndarray:
    """[S, num_groups]: the node of each group in every split of the groups into
    num_nodes unordered sets of equal size (group 0 always on node 0)."""
    per_node = num_groups // num_nodes

    def splits(groups: tuple[int, ...]):
        if not groups:
            yield []
            return
        first, rest = groups[0], groups[1:]
        for others in combinations(rest, per_node - 1):
            remaining = tuple(g for g in rest if g not in others)
            for tail in splits(remaining):
                yield [(first,) + others] + tail

    table = []
    for split in splits(tuple(range(num_groups))):
        node_of = np.empty(num_groups, dtype=np.int64)
        for node, members in enumerate(split):
            node_of[list(members)] = node
        table.append(node_of)
    return np.array(table)


def count_equal_splits(num_groups: int, num_nodes: int) -> int:
    per_node = num_groups // num_nodes
    return math.factorial(num_groups) // (math.factorial(per_node) ** num_nodes * math.factorial(num_nodes))


def group_split_bound(weight: np.ndarray, num_slots: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> np.ndarray:
    """weight: [L, E] -> [L], the hierarchical policy's bound from the groups' split.

    For every equal split of the groups over the nodes, a node's GPUs carry its
    load, so the peak is at least node load / GPUs per node, and at least the node's
    replica_bound with the node's slots. The minimum over all splits (enumerated,
    so exact) bounds every placement under the hierarchical policy.
    """
    num_layers, num_experts = weight.shape
    gpus_per_node, slots_per_node = num_gpus // num_nodes, num_slots // num_nodes
    group_size = num_experts // num_groups
    per_node = num_groups // num_nodes
    extra = slots_per_node - group_size * per_node
    if extra < 0:
        raise ValueError("a node's slots cannot hold its experts")
    splits = equal_splits(num_groups, num_nodes)                      # [S, groups]
    grouped = weight.reshape(num_layers, num_groups, group_size)
    group_load = grouped.sum(-1)                                       # [L, groups]
    # The extra + 1 largest quotients of each group are all a node's bound can use.
    quotients = (grouped[:, :, :, None] / np.arange(1, extra + 2)).reshape(num_layers, num_groups, -1)
    keep = min(extra + 1, quotients.shape[-1])
    tops = -np.sort(-quotients, axis=-1)[:, :, :keep]                  # [L, groups, keep]
    members = np.argsort(splits, axis=-1, kind="stable").reshape(len(splits), num_nodes, per_node)
    node_load = group_load[:, members].sum(-1)                         # [L, S, nodes]
    node_quotients = tops[:, members].reshape(num_layers, len(splits), num_nodes, -1)
    node_replica = -np.partition(-node_quotients, extra, axis=-1)[..., extra]
    per_split = np.maximum(node_load / gpus_per_node, node_replica).max(-1)
    return per_split.min(-1)


class ConstraintBlocks:
    """A sparse constraint matrix built block by block: lower <= A x <= upper."""

    def __init__(self, num_vars: int):
        self.num_vars, self.num_rows = num_vars, 0
        self.rows, self.cols, self.values, self.lower, self.upper = [], [], [], [], []

    def add(self, num_rows: int, rows, cols, values, lower: float, upper: float) -> None:
        """rows: block-relative row of each entry; cols and values alike."""
        self.rows.append(np.asarray(rows, dtype=np.int64) + self.num_rows)
        self.cols.append(np.asarray(cols, dtype=np.int64))
        self.values.append(np.asarray(values, dtype=np.float64))
        self.lower.append(np.full(num_rows, lower, dtype=np.float64))
        self.upper.append(np.full(num_rows, upper, dtype=np.float64))
        self.num_rows += num_rows

    def matrix(self):
        shape = (self.num_rows, self.num_vars)
        values = (np.concatenate(self.values), (np.concatenate(self.rows), np.concatenate(self.cols)))
        return coo_matrix(values, shape=shape).tocsr(), np.concatenate(self.lower), np.concatenate(self.upper)


@dataclass
class LayerSolution:
    """One layer's MILP outcome. gpu_experts: [num_gpus, slots per GPU] expert of
    each slot, or None when the solver found no placement; counts: [E] or None."""

    gpu_experts: np.ndarray | None
    counts: np.ndarray | None
    objective: float | None
    dual_bound: float | None
    status: str
    variables: int
    seconds: float


def count_ranges(weight: np.ndarray, num_slots: int, upper: float | None) -> tuple[np.ndarray, np.ndarray]:
    """[E] lowest and highest replica count each expert can have in a placement whose
    peak is at most `upper` (every count from 1 to extra + 1 when upper is None)."""
    num_experts = weight.shape[0]
    low = np.ones(num_experts, dtype=np.int64)
    if upper is not None and upper > 0:
        # A replica heavier than `upper` would make the peak exceed it.
        low = np.maximum(1, np.ceil(weight / upper - 1e-9).astype(np.int64))
    spare = num_slots - int(low.sum())
    if spare < 0:
        raise ValueError("the upper bound leaves too few slots")
    return low, low + spare


def model_variables(weight: np.ndarray, num_slots: int, num_gpus: int, upper: float | None = None,
                    counts: np.ndarray | None = None) -> int:
    """Integer variables of solve_layer's model."""
    if counts is not None:
        return weight.shape[0] * num_gpus
    low, high = count_ranges(weight, num_slots, upper)
    return int((high - low + 1).sum()) * (num_gpus + 1)


def solve_layer(weight: np.ndarray, num_slots: int, num_gpus: int, time_limit: float, *,
                num_groups: int = 1, num_nodes: int = 1, policy: str = "global",
                upper: float | None = None, counts: np.ndarray | None = None) -> LayerSolution:
    """The placement of one layer with the smallest peak GPU load, by MILP.

    Variables: u[e, k] = 1 when expert e has k replicas; y[e, k, g] its replicas on
    GPU g; the peak M. Every GPU takes exactly num_slots / num_gpus replicas and a
    load of at most M; GPU loads are kept in decreasing order inside each node (the
    GPUs are interchangeable). Under the hierarchical policy, z[group, node] = 1
    puts a group's replicas on that node only, num_groups / num_nodes groups per
    node. With `counts`, the counts are fixed and only the assignment is solved.
    `upper` (a peak some placement reaches) limits the counts to those that can
    still beat it, which keeps the optimum and shrinks the model.

    Args:
        weight: [E] non-negative loads.
    Returns:
        LayerSolution; its dual_bound is a proven lower bound on the peak of every
        placement the model covers (see the module docstring).
    """
    started = time.perf_counter()
    weight = np.asarray(weight, dtype=np.float64)
    num_experts = weight.shape[0]
    per_gpu = num_slots // num_gpus
    scale = max(weight.sum() / num_gpus, 1e-12)
    w = weight / scale
    if counts is not None:
        low = high = np.asarray(counts, dtype=np.int64)
    else:
        low, high = count_ranges(weight, num_slots, None if upper is None else upper * (1 + 1e-9))
    expert_of = np.repeat(np.arange(num_experts), high - low + 1)                 # one entry per (e, k)
    count_of = np.concatenate([np.arange(a, b + 1) for a, b in zip(low, high)])
    pairs = len(expert_of)
    hierarchical = policy == "hierarchical" and hierarchical_applies(num_groups, num_nodes)
    num_u, num_y = pairs, pairs * num_gpus
    num_z = num_groups * num_nodes if hierarchical else 0
    m_index = num_u + num_y + num_z
    num_vars = m_index + 1

    blocks = ConstraintBlocks(num_vars)
    pair_ids, gpu_ids = np.arange(pairs), np.arange(num_gpus)
    y_of = num_u + pair_ids[:, None] * num_gpus + gpu_ids                      # [pairs, gpus]
    share = w[expert_of] / count_of                                             # load of one replica of (e, k)
    pair_rows, gpu_cols = np.broadcast_arrays(pair_ids[:, None], gpu_ids)
    # One count per expert.
    blocks.add(num_experts, expert_of, pair_ids, np.ones(pairs), 1, 1)
    # The replicas of (e, k) add up to k when chosen.
    blocks.add(pairs, np.concatenate([pair_rows.ravel(), pair_ids]), np.concatenate([y_of.ravel(), pair_ids]),
               np.concatenate([np.ones(num_y), -count_of.astype(float)]), 0, 0)
    # Slots and load of every GPU.
    blocks.add(num_gpus, gpu_cols.ravel(), y_of.ravel(), np.ones(num_y), per_gpu, per_gpu)
    load_values = np.broadcast_to(share[:, None], (pairs, num_gpus)).ravel()
    blocks.add(num_gpus, np.concatenate([gpu_cols.ravel(), gpu_ids]), np.concatenate([y_of.ravel(), np.full(num_gpus, m_index)]),
               np.concatenate([load_values, -np.ones(num_gpus)]), -np.inf, 0)
    # Interchangeable GPUs: loads in decreasing order inside each node.
    gpus_per_node = num_gpus // num_nodes if hierarchical else num_gpus
    ordered = gpu_ids[:-1][(gpu_ids[:-1] + 1) % gpus_per_node != 0]
    if len(ordered):
        order_rows = np.broadcast_to(np.arange(len(ordered)), (pairs, len(ordered)))
        blocks.add(len(ordered), np.concatenate([order_rows.ravel(), order_rows.ravel()]),
                   np.concatenate([y_of[:, ordered].ravel(), y_of[:, ordered + 1].ravel()]),
                   np.concatenate([np.repeat(share, len(ordered)), -np.repeat(share, len(ordered))]), 0, np.inf)
    if hierarchical:
        group_size = num_experts // num_groups
        z_of = num_u + num_y + np.arange(num_groups)[:, None] * num_nodes + np.arange(num_nodes)   # [groups, nodes]
        blocks.add(num_groups, np.repeat(np.arange(num_groups), num_nodes), z_of.ravel(), np.ones(num_z), 1, 1)
        # A group's replicas go only to the GPUs of its node: sum_(e in group, k) y[e, k, g] <= slots * z.
        group_of_pair = expert_of // group_size
        link_rows = group_of_pair[:, None] * num_gpus + gpu_ids                      # [pairs, gpus]
        node_of_gpu = gpu_ids // gpus_per_node
        link_z = z_of[:, node_of_gpu]                                                # [groups, gpus]
        blocks.add(num_groups * num_gpus, np.concatenate([link_rows.ravel(), np.arange(num_groups * num_gpus)]),
                   np.concatenate([y_of.ravel(), link_z.ravel()]),
                   np.concatenate([np.ones(num_y), np.full(num_groups * num_gpus, -float(per_gpu))]), -np.inf, 0)
        blocks.add(num_nodes, np.tile(np.arange(num_nodes), num_groups), z_of.ravel(), np.ones(num_z),
                   num_groups // num_nodes, num_groups // num_nodes)
        blocks.add(1, np.zeros(1, dtype=np.int64), z_of[:1, 0], np.ones(1), 1, 1)   # group 0 on node 0
    matrix, lower, upper_rows = blocks.matrix()
    var_low = np.zeros(num_vars)
    var_high = np.concatenate([np.ones(num_u), np.repeat(np.minimum(count_of, per_gpu), num_gpus).astype(float),
                               np.ones(num_z), [np.inf]])
    # The peak lies between the proven simple bounds and the given upper bound: a tight
    # range lets the solver stop as soon as it meets either.
    simple = simple_bounds(weight[None], num_slots, num_groups, num_nodes, num_gpus, policy)
    var_low[m_index] = max(float(value[0]) for value in simple.values()) / scale * (1 - 1e-7)
    if upper is not None and counts is None:
        var_high[m_index] = upper / scale * (1 + 1e-4)   # a looser cutoff: HiGHS mishandles very narrow ranges
    integrality = np.concatenate([np.ones(num_u + num_y + num_z), [0]])
    objective = np.zeros(num_vars)
    objective[m_index] = 1.0
    result = milp(objective, constraints=LinearConstraint(matrix, lower, upper_rows), integrality=integrality,
                  bounds=Bounds(var_low, var_high),
                  options={"time_limit": max(float(time_limit), 1e-3), "disp": False, "mip_rel_gap": 0.0})
    seconds = time.perf_counter() - started
    status = {0: "optimal", 1: "time_limit", 2: "infeasible"}.get(result.status, f"solver status {result.status}")
    dual = getattr(result, "mip_dual_bound", None)
    dual_bound = None if dual is None or not np.isfinite(dual) else max(float(dual), 0.0) * scale
    if result.x is None:
        return LayerSolution(None, None, None, dual_bound, status, num_u + num_y + num_z, seconds)
    x = np.round(result.x).astype(np.int64)
    chosen = x[:num_u] == 1
    layer_counts = np.zeros(num_experts, dtype=np.int64)
    layer_counts[expert_of[chosen]] = count_of[chosen]
    on_gpu = x[num_u:num_u + num_y].reshape(pairs, num_gpus)
    gpu_experts = np.stack([np.repeat(expert_of, on_gpu[:, g]) for g in range(num_gpus)])
    peak = float(((weight / np.maximum(layer_counts, 1))[gpu_experts]).sum(-1).max())
    if status == "optimal":
        dual_bound = peak if dual_bound is None else min(max(dual_bound, 0.0), peak)
    return LayerSolution(gpu_experts, layer_counts, peak, dual_bound, status, num_u + num_y + num_z, seconds)


def simple_bounds(weight: np.ndarray, num_slots: int, num_groups: int, num_nodes: int, num_gpus: int,
                  policy: str = "global") -> dict[str, np.ndarray]:
    """weight: [L, E] -> {piece: [L]}: mean, replica, and under the hierarchical
    policy (where it applies) groups, the bound of the best split of groups."""
    pieces = {"mean": mean_bound(weight, num_gpus), "replica": replica_bound(weight, num_slots)}
    if policy == "hierarchical" and hierarchical_applies(num_groups, num_nodes):
        if count_equal_splits(num_groups, num_nodes) <= MAX_SPLITS:
            pieces["groups"] = group_split_bound(weight, num_slots, num_groups, num_nodes, num_gpus)
    return pieces


def layer_lower_bound(weight: np.ndarray, num_slots: int, num_groups: int, num_nodes: int, num_gpus: int,
                      time_limit: float, policy: str = "global", upper: float | None = None,
                      max_variables: int = MAX_VARIABLES) -> dict:
    """One layer's bound and how it was found.

    Args:
        weight: [E]; upper: the peak of some placement under the policy, or None.
    Returns:
        {"bound": float, "source": the piece that gave it, "solver": the MILP's
        outcome ("optimal", "time_limit", "too_large": more than max_variables
        integer variables, "not_run": no time given), "seconds": float}.
    """
    started = time.perf_counter()
    weight = np.asarray(weight, dtype=np.float64)
    pieces = {name: float(value[0]) for name, value in
              simple_bounds(weight[None], num_slots, num_groups, num_nodes, num_gpus, policy).items()}
    solver = "not_run"
    if time_limit > 0:
        size = model_variables(weight, num_slots, num_gpus, upper)
        if size > max_variables:
            solver = "too_large"
        else:
            solution = solve_layer(weight, num_slots, num_gpus, time_limit, num_groups=num_groups,
                                   num_nodes=num_nodes, policy=policy, upper=upper)
            solver = solution.status
            if solution.dual_bound is not None:
                pieces["milp"] = solution.dual_bound
    source = max(pieces, key=pieces.get)
    return {"bound": pieces[source], "source": source, "solver": solver,
            "seconds": time.perf_counter() - started}


def lower_bound(weight, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                time_limit: float = 10.0, policy: str = "global", upper=None,
                max_variables: int = MAX_VARIABLES):
    """Proven lower bounds on the peak GPU load, one per layer.

    The largest of: the mean GPU load; the smallest heaviest replica any replica
    counts allow (exact, see replica_bound); under policy="hierarchical" (where the
    scenario has one) the best equal split of groups over nodes (exact, see
    group_split_bound); and the MILP's dual bound after `time_limit` seconds per
    layer, when the model has at most `max_variables` integer variables.

    What it proves depends on `policy` (module docstring): "global" bounds every
    valid placement; "hierarchical" bounds only placements that keep groups whole
    on nodes.

    Args:
        weight: [num_layers, num_logical] tensor or array; upper: [num_layers] peaks
            some placements reach (they shrink the MILP), or None.
    Returns:
        [num_layers] float64 tensor.
    """
    import torch

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    array = weight.detach().cpu().double().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    if array.ndim != 2 or (array < 0).any() or not np.isfinite(array).all():
        raise ValueError("weight must be [num_layers, num_logical], finite and non-negative")
    tops = [None] * array.shape[0] if upper is None else [float(u) for u in upper]
    bounds = [layer_lower_bound(row, num_replicas, num_groups, num_nodes, num_gpus, time_limit, policy, top,
                                max_variables)["bound"] for row, top in zip(array, tops)]
    return torch.tensor(bounds, dtype=torch.float64)
