"""The balancer contract: scenarios, the placement triple and its validation.

A balancer is a function

    rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)
        -> (phy2log, log2phy, logcnt)

with the shapes of DeepSeek's EPLB, vLLM and SGLang:

    weight:  [num_layers, num_logical]         predicted load of each logical expert
    phy2log: [num_layers, num_replicas] int64  logical expert held by each physical slot
    log2phy: [num_layers, num_logical, X] int64  slots of each logical expert, -1 padded,
                                               any X >= logcnt.max()
    logcnt:  [num_layers, num_logical] int64   replicas of each logical expert

Slot `p` lives on GPU `p // (num_replicas // num_gpus)`, GPU `g` on node
`g // (num_gpus // num_nodes)`.

Optional keyword `prev_phy2log`: [num_layers, num_replicas] int64, the placement in
service (None for the first plan). The runner passes it to balancers whose signature
names it (PREVIOUS_PLACEMENT_KEYWORD).

Optional keyword `report`: a dict the balancer may fill with JSON-able facts about
the call (a solver's status, its gap); the runner passes one to balancers whose
signature names it (REPORT_KEYWORD) and keeps what they put in the result record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


PREVIOUS_PLACEMENT_KEYWORD = "prev_phy2log"
REPORT_KEYWORD = "report"


class PlacementError(ValueError):
    """A balancer's output breaks the contract; the message names the first violation."""


class ScenarioError(ValueError):
    """A scenario whose numbers do not fit the model or each other."""


def hierarchical_applies(num_groups: int, num_nodes: int) -> bool:
    """Whether DeepSeek's hierarchical policy (whole expert groups per node) constrains a
    scenario: only with more than one node, and groups that divide among the nodes. On
    one node it places exactly as the global policy, and is treated as global."""
    return num_nodes > 1 and num_groups % num_nodes == 0


@dataclass(frozen=True)
class Scenario:
    """One deployment: how many physical slots, expert groups, nodes and GPUs."""

    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    name: str = field(default="", compare=False)

    @property
    def slots_per_gpu(self) -> int:
        return self.num_replicas // self.num_gpus

    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.num_nodes

    @property
    def hierarchical(self) -> bool:
        """Whether DeepSeek's hierarchical policy constrains this scenario (see hierarchical_applies)."""
        return hierarchical_applies(self.num_groups, self.num_nodes)

    @property
    def policy(self) -> str:
        """"hierarchical" where whole expert groups are kept on one node of several, else "global"."""
        return "hierarchical" if self.hierarchical else "global"

    def label(self) -> str:
        return f"R{self.num_replicas}/G{self.num_groups}/N{self.num_nodes}/P{self.num_gpus}"

    def as_dict(self) -> dict:
        return {
            "num_replicas": self.num_replicas,
            "num_groups": self.num_groups,
            "num_nodes": self.num_nodes,
            "num_gpus": self.num_gpus,
        }

    def check(self, num_logical: int) -> None:
        """Raise ScenarioError unless the scenario fits a model of `num_logical` experts."""
        for key, value in self.as_dict().items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScenarioError(f"{key} must be a positive integer, got {value!r}")
        if self.num_replicas < num_logical:
            raise ScenarioError(
                f"num_replicas={self.num_replicas} is fewer than the {num_logical} logical "
                "experts (each needs a slot)"
            )
        if self.num_replicas % self.num_gpus:
            raise ScenarioError(
                f"num_replicas={self.num_replicas} is not divisible by num_gpus={self.num_gpus}"
            )
        if self.num_gpus % self.num_nodes:
            raise ScenarioError(
                f"num_gpus={self.num_gpus} is not divisible by num_nodes={self.num_nodes}"
            )
        if num_logical % self.num_groups:
            raise ScenarioError(
                f"the {num_logical} logical experts are not divisible into "
                f"num_groups={self.num_groups} groups"
            )


class Placement(NamedTuple):
    """The triple a balancer returns (shapes in the module docstring)."""

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    """Index of the first True entry of `mask` (row-major), as a tuple of ints."""
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_tensor(name: str, value, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise PlacementError(f"{name} is a {type(value).__name__}, expected a torch.Tensor")
    if value.dtype != torch.int64:
        raise PlacementError(f"{name} has dtype {value.dtype}, expected torch.int64")
    if value.dim() != ndim:
        raise PlacementError(
            f"{name} has shape {tuple(value.shape)}, expected {ndim} dimensions"
        )
    return value.detach().cpu()


def as_placement(output) -> Placement:
    """Turn a balancer's return value into a Placement of copies, or raise PlacementError."""
    if not isinstance(output, (tuple, list)) or len(output) != 3:
        raise PlacementError(
            f"balancer returned {type(output).__name__}, expected a tuple "
            "(phy2log, log2phy, logcnt)"
        )
    # Copies, so that nothing the balancer keeps can change the placement after validation.
    return Placement(*(part.detach().clone() if isinstance(part, torch.Tensor) else part for part in output))


def placement_of(phy2log: torch.Tensor, num_logical: int) -> Placement:
    """The whole triple of a slot map alone, as SGLang's physical_to_logical_map gives it.

    Args:
        phy2log: [num_layers, num_replicas] int64, each slot's logical expert.
    Returns:
        the Placement: logcnt [num_layers, num_logical] counted from phy2log, log2phy
        [num_layers, num_logical, max count] listing each expert's slots in slot order,
        -1 padded. PlacementError for an id outside 0..num_logical-1.
    """
    phy2log = _check_tensor("phy2log", phy2log, 2)
    layers, replicas = phy2log.shape
    if phy2log.numel() == 0:
        raise PlacementError(f"phy2log has shape {tuple(phy2log.shape)}: no slots")
    if ((phy2log < 0) | (phy2log >= num_logical)).any():
        raise PlacementError(f"phy2log holds an expert id outside 0..{num_logical - 1}")
    logcnt = torch.zeros(layers, num_logical, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    slots = torch.arange(replicas).expand(layers, replicas)
    # Slots sorted by (expert, slot); each one's rank among its expert's slots is its
    # position less the position of the expert's first slot.
    order = torch.argsort(phy2log * replicas + slots, dim=1)
    experts = phy2log.gather(1, order)
    first = (logcnt.cumsum(1) - logcnt).gather(1, experts)
    log2phy = torch.full((layers, num_logical, max(1, int(logcnt.max()))), -1, dtype=torch.int64)
    log2phy[torch.arange(layers)[:, None], experts, slots - first] = order
    return Placement(phy2log.clone(), log2phy, logcnt)


def validate_placement(
    phy2log: torch.Tensor,
    log2phy: torch.Tensor,
    logcnt: torch.Tensor,
    *,
    num_logical: int,
    num_replicas: int,
    num_gpus: int,
    num_layers: int | None = None,
) -> None:
    """Raise PlacementError naming the first way the triple breaks the contract.

    Args:
        phy2log: [num_layers, num_replicas] int64.
        log2phy: [num_layers, num_logical, X] int64, X >= logcnt.max(), padded with -1.
        logcnt: [num_layers, num_logical] int64.
        num_layers: expected number of layers; taken from phy2log when None.

    Checks, in order: types, dtypes and shapes; slot indices in range; every logical
    expert has a replica; each logcnt row sums to num_replicas; logcnt counts what
    phy2log holds; log2phy lists each expert's slots first and pads with -1 after;
    no slot is listed twice; every listed slot holds the expert it is listed under.
    """
    if num_replicas % num_gpus:
        raise PlacementError(f"num_replicas={num_replicas} is not divisible by num_gpus={num_gpus}")
    phy2log = _check_tensor("phy2log", phy2log, 2)
    log2phy = _check_tensor("log2phy", log2phy, 3)
    logcnt = _check_tensor("logcnt", logcnt, 2)
    layers = phy2log.shape[0] if num_layers is None else num_layers

    if tuple(phy2log.shape) != (layers, num_replicas):
        raise PlacementError(
            f"phy2log has shape {tuple(phy2log.shape)}, expected ({layers}, {num_replicas})"
        )
    if tuple(logcnt.shape) != (layers, num_logical):
        raise PlacementError(
            f"logcnt has shape {tuple(logcnt.shape)}, expected ({layers}, {num_logical})"
        )
    if log2phy.shape[0] != layers or log2phy.shape[1] != num_logical:
        raise PlacementError(
            f"log2phy has shape {tuple(log2phy.shape)}, expected ({layers}, {num_logical}, X)"
        )

    bad = (phy2log < 0) | (phy2log >= num_logical)
    if bad.any():
        layer, slot = _first(bad)
        raise PlacementError(
            f"phy2log[{layer}, {slot}] = {int(phy2log[layer, slot])} is out of range "
            f"[0, {num_logical})"
        )
    bad = (log2phy < -1) | (log2phy >= num_replicas)
    if bad.any():
        layer, expert, k = _first(bad)
        raise PlacementError(
            f"log2phy[{layer}, {expert}, {k}] = {int(log2phy[layer, expert, k])} is out of "
            f"range [0, {num_replicas}) and not the padding -1"
        )

    held = torch.zeros(layers, num_logical, dtype=torch.int64)
    held.scatter_add_(1, phy2log, torch.ones_like(phy2log))
    missing = held == 0
    if missing.any():
        layer, expert = _first(missing)
        raise PlacementError(f"logical expert {expert} of layer {layer} has no replica")
    missing = logcnt < 1
    if missing.any():
        layer, expert = _first(missing)
        raise PlacementError(
            f"logcnt[{layer}, {expert}] = {int(logcnt[layer, expert])}: every logical "
            "expert needs at least one replica"
        )
    row_sums = logcnt.sum(-1)
    bad_rows = row_sums != num_replicas
    if bad_rows.any():
        (layer,) = _first(bad_rows)
        raise PlacementError(
            f"logcnt row of layer {layer} sums to {int(row_sums[layer])}, expected "
            f"num_replicas={num_replicas}"
        )
    disagree = held != logcnt
    if disagree.any():
        layer, expert = _first(disagree)
        raise PlacementError(
            f"logcnt[{layer}, {expert}] = {int(logcnt[layer, expert])} but phy2log holds "
            f"expert {expert} in {int(held[layer, expert])} slots"
        )

    width = log2phy.shape[2]
    if width < int(logcnt.max()):
        raise PlacementError(
            f"log2phy has width {width}, fewer than logcnt.max() = {int(logcnt.max())}"
        )
    position = torch.arange(width).view(1, 1, width)
    listed = position < logcnt.unsqueeze(-1)
    bad = listed & (log2phy < 0)
    if bad.any():
        layer, expert, k = _first(bad)
        raise PlacementError(
            f"log2phy[{layer}, {expert}, {k}] = {int(log2phy[layer, expert, k])} but "
            f"logcnt[{layer}, {expert}] = {int(logcnt[layer, expert])} slots must come first"
        )
    bad = ~listed & (log2phy != -1)
    if bad.any():
        layer, expert, k = _first(bad)
        raise PlacementError(
            f"log2phy[{layer}, {expert}, {k}] = {int(log2phy[layer, expert, k])} is padding "
            f"past logcnt[{layer}, {expert}] = {int(logcnt[layer, expert])} and must be -1"
        )

    # Every slot must be listed exactly once: count the listings of each slot.
    slots = torch.where(listed, log2phy, torch.full_like(log2phy, num_replicas))
    times_listed = torch.zeros(layers, num_replicas + 1, dtype=torch.int64)
    times_listed.scatter_add_(1, slots.view(layers, -1), torch.ones(layers, slots[0].numel(), dtype=torch.int64))
    times_listed = times_listed[:, :num_replicas]
    bad = times_listed > 1
    if bad.any():
        layer, slot = _first(bad)
        raise PlacementError(
            f"slot {slot} of layer {layer} is listed {int(times_listed[layer, slot])} times "
            "in log2phy (duplicate slot)"
        )
    owner = phy2log.gather(1, slots.clamp(max=num_replicas - 1).view(layers, -1)).view_as(slots)
    expert_ids = torch.arange(num_logical).view(1, num_logical, 1)
    bad = listed & (owner != expert_ids)
    if bad.any():
        layer, expert, k = _first(bad)
        slot = int(log2phy[layer, expert, k])
        raise PlacementError(
            f"log2phy lists slot {slot} under expert {expert} in layer {layer}, but "
            f"phy2log[{layer}, {slot}] = {int(phy2log[layer, slot])}"
        )
