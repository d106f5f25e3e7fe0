"""The dataset type: load windows `[num_windows, num_layers, num_logical]` of one model
(token counts per logical expert, each window the sum of `window_steps` steps), with the
model's number of expert groups, its routing and its default scenarios.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from eplb_bench.core.contract import Scenario, ScenarioError
from eplb_bench.core.record import CROSS_WORKLOAD, NEXT_WINDOW


DEFAULT_WINDOW_STEPS = 100
# The public evaluators' deployment, used for data files that name no scenario.
PUBLIC_SCENARIO = Scenario(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)


class DatasetError(ValueError):
    """A dataset that is missing, malformed or unusable; the message is one line."""


@dataclass
class Dataset:
    """Load windows of one model with its metadata.

    windows: [num_windows, num_layers, num_logical] int64 or float64, non-negative.
    """

    name: str
    windows: torch.Tensor
    num_groups: int = 1
    scenarios: list[Scenario] = field(default_factory=list)
    window_steps: int | None = DEFAULT_WINDOW_STEPS
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_windows(self) -> int:
        return self.windows.shape[0]

    @property
    def num_layers(self) -> int:
        return self.windows.shape[1]

    @property
    def num_logical(self) -> int:
        return self.windows.shape[2]

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the windows as loaded (shape, dtype and values): the identity of
        the data a record was measured on, whatever file or generator it came from."""
        windows = self.windows.contiguous().cpu()
        digest = hashlib.sha256(f"{tuple(windows.shape)} {windows.dtype}\n".encode())
        digest.update(windows.numpy().tobytes())
        return digest.hexdigest()

    @property
    def protocol(self) -> str:
        """NEXT_WINDOW for load histories; CROSS_WORKLOAD for collections of static
        workloads (the manifest's "protocol")."""
        return self.meta.get("protocol") or NEXT_WINDOW

    @property
    def workload_names(self) -> list[str]:
        """The name of each window: its workload's under CROSS_WORKLOAD, else "window I"."""
        if self.protocol == CROSS_WORKLOAD:
            return [str(entry["name"]) for entry in self.meta["workloads"]]
        return [f"window {index}" for index in range(self.num_windows)]

    def scored_pairs(self) -> list[tuple[int, int]]:
        """(window planned on, window scored) pairs, the one rule of both protocols.

        NEXT_WINDOW: (i, i + 1) for every window but the last. CROSS_WORKLOAD: each
        workload in-sample (i, i), then the pairs the manifest names, in its order.
        """
        if self.protocol != CROSS_WORKLOAD:
            return [(index, index + 1) for index in range(self.num_windows - 1)]
        index = {name: position for position, name in enumerate(self.workload_names)}
        named = [(index[plan], index[serve]) for plan, serve in self.meta.get("pairs", [])]
        return [(position, position) for position in range(self.num_windows)] + named

    @property
    def routing(self) -> "Routing":
        """How tokens choose experts: the manifest's "routing", else its generator's
        (top-k 8, no group limit if unknown)."""
        generator = self.meta.get("generator") if isinstance(self.meta.get("generator"), dict) else {}
        routing = self.meta.get("routing") if isinstance(self.meta.get("routing"), dict) else {}
        top_k = routing.get("top_k") or self.meta.get("top_k") or generator.get("top_k") or DEFAULT_TOP_K
        groups = routing.get("num_groups") or generator.get("routing_groups") or 1
        chosen = routing.get("topk_groups") or generator.get("topk_groups") or 0
        if chosen <= 0 or groups <= 1 or self.num_logical % groups:
            groups, chosen = 1, 1
        return Routing(int(top_k), int(groups), int(chosen))


@dataclass(frozen=True)
class Routing:
    """Token routing of a model: top_k experts per token, from topk_groups of
    num_groups contiguous expert groups (1 of 1 when routing is not group-limited)."""

    top_k: int = 8
    num_groups: int = 1
    topk_groups: int = 1


DEFAULT_TOP_K = 8


def _as_tensor(windows: np.ndarray) -> torch.Tensor:
    dtype = np.int64 if np.issubdtype(windows.dtype, np.integer) else np.float64
    return torch.from_numpy(np.ascontiguousarray(windows, dtype=dtype))


def default_groups(num_logical: int) -> int:
    """Groups for a file that names none: the public evaluators' 8 when they divide the experts, else 1."""
    return PUBLIC_SCENARIO.num_groups if num_logical % PUBLIC_SCENARIO.num_groups == 0 else 1


def _default_scenarios(num_logical: int, num_groups: int) -> list[Scenario]:
    """The public evaluators' scenario with `num_groups` groups, when it fits the shape."""
    candidate = Scenario(PUBLIC_SCENARIO.num_replicas, num_groups, PUBLIC_SCENARIO.num_nodes,
                         PUBLIC_SCENARIO.num_gpus, name="public evaluators")
    try:
        candidate.check(num_logical)
    except ScenarioError:
        return []
    return [candidate]
