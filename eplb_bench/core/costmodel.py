"""A modeled MoE step time: expert compute, dispatch and combine, and the cost of
migrating expert weights, from a placement and a hardware profile (docs/costmodel.md).

Per MoE layer and step, with `load[g]` the token-expert pairs GPU g serves (the
evaluators' load model: an expert's pairs split evenly over its replicas):

- **compute[g]** = sum over g's slots of max(pairs x flops_per_pair / flops,
  weight_bytes / hbm): each expert's GEMMs at the roofline of the GPU, so a slot with
  few tokens still pays for reading its weights (decode) and a busy one for its FLOPs;
  a slot with no pair costs nothing;
- **dispatch[g]** = max(nvlink_bytes[g] / nvlink, network_bytes[g] / network): tokens
  start evenly spread over the GPUs; every pair that lands on g from another GPU arrives
  over NVLink (directly or forwarded from its node's network receiver), and the share
  that crosses nodes, de-duplicated by destination node as in
  eplb_bench.core.simulate.internode_share, also over the network; the two links run
  at once;
- **combine[g]**: the same volumes back, at the combine's bytes per value;
- **layer time** = max_g compute + max_g dispatch + max_g combine + 2 x latency: the
  slowest GPU holds every collective; nothing overlaps.

The step time is the sum over layers. **Migration**: a rebalance copies to each GPU
the experts it newly holds, from a GPU of its node over NVLink when one held the
expert before, else over the network; all GPUs at once, so it takes the slowest
GPU's time (migration_seconds); `overlap_share` of it hides behind compute when
migration is overlapped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from eplb_bench.core.simulate import layer_remote_shares, remote_shares, slot_loads

PROFILES_DIR = Path(__file__).with_name("profiles")
# Bounds that keep every modeled time finite and far from any real cluster's edge.
MIN_RATE = 1e3
MAX_LATENCY_S = 1.0
MAX_BYTES_PER_VALUE = 16


class CostModelError(ValueError):
    """A profile or model shape that cannot be used; the message is one line."""


@dataclass(frozen=True)
class ExpertShape:
    """One routed expert of a model: a gated MLP of three hidden x intermediate matrices."""

    hidden_size: int
    intermediate_size: int
    weight_bytes_per_param: float   # 1 for FP8, 2 for BF16, about 0.53 for MXFP4 with scales
    source: str = ""

    @classmethod
    def from_dict(cls, values, where: str = "expert_shape") -> ExpertShape:
        """An ExpertShape from a manifest's "expert_shape"; CostModelError (one line) otherwise."""
        if not isinstance(values, dict) or set(values) - {field.name for field in fields(cls)}:
            raise CostModelError(f"{where}: expected an object of hidden_size, intermediate_size, "
                                 "weight_bytes_per_param and source")
        sizes = [values.get("hidden_size"), values.get("intermediate_size")]
        per_param = values.get("weight_bytes_per_param")
        if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes) \
                or isinstance(per_param, bool) or not isinstance(per_param, (int, float)) \
                or not (math.isfinite(per_param) and per_param > 0) or not isinstance(values.get("source", ""), str):
            raise CostModelError(f"{where}: hidden_size and intermediate_size must be positive integers, "
                                 "weight_bytes_per_param a positive number, source a string")
        return cls(values["hidden_size"], values["intermediate_size"], float(per_param), values.get("source", ""))

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def weight_bytes(self) -> float:
        """Bytes of the expert's weights: gate, up and down projections."""
        return 3 * self.hidden_size * self.intermediate_size * self.weight_bytes_per_param

    @property
    def flops_per_pair(self) -> float:
        """FLOPs of one token through the expert: three GEMMs, 2 FLOPs per multiply-add."""
        return 2 * 3 * self.hidden_size * self.intermediate_size


@dataclass(frozen=True)
class HardwareProfile:
    """What the cost model needs of a cluster; a small JSON file (PROFILES_DIR) that a
    user can copy and edit. Rates are per GPU and sustained, not peak."""

    name: str
    description: str
    gpus_per_node: int
    flops_per_s: float              # expert GEMMs, at the dispatch precision
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float       # received per GPU inside a node
    network_bytes_per_s: float      # received per GPU across nodes
    dispatch_bytes_per_value: float  # activations sent to the experts (FP8: 1)
    combine_bytes_per_value: float   # results sent back (BF16: 2)
    latency_s: float                # fixed cost of one dispatch or combine
    migration_bytes_per_s: float    # expert weights received per GPU during a rebalance
    overlap_share: float            # share of a migration hidden behind compute when overlapped
    sources: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict) -> HardwareProfile:
        names = {field.name for field in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values) - {"sources"})
        if unknown or missing:
            raise CostModelError("profile: " + "; ".join(
                part for part in (f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                                  f"missing {', '.join(missing)}" if missing else "") if part))
        label = values.get("name")
        if not (isinstance(label, str) and label and isinstance(values.get("description"), str)):
            raise CostModelError("profile: name must be a non-empty string and description a string")
        sources = values.get("sources", [])
        if not (isinstance(sources, list) and all(isinstance(source, str) for source in sources)):
            raise CostModelError(f"profile {label}: sources must be a list of strings")
        count = values.get("gpus_per_node")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CostModelError(f"profile {label}: gpus_per_node must be a positive integer, got {count!r}")
        profile = cls(**{**values, "sources": tuple(sources)})
        for field in fields(cls):
            value = getattr(profile, field.name)
            if field.type in ("float", "int") and not (isinstance(value, (int, float)) and math.isfinite(value)
                                                       and value >= 0 and not isinstance(value, bool)):
                raise CostModelError(f"profile {profile.name}: {field.name} must be a finite number >= 0, "
                                     f"got {value!r}")
        positive = ("gpus_per_node", "flops_per_s", "hbm_bytes_per_s", "nvlink_bytes_per_s", "network_bytes_per_s",
                    "migration_bytes_per_s")
        if any(getattr(profile, name) <= 0 for name in positive) or not profile.overlap_share <= 1:
            raise CostModelError(f"profile {profile.name}: {', '.join(positive)} must be positive and "
                                 "overlap_share at most 1")
        rates = [name for name in positive[1:] if getattr(profile, name) < MIN_RATE]
        if rates or profile.latency_s > MAX_LATENCY_S or max(profile.dispatch_bytes_per_value,
                                                             profile.combine_bytes_per_value) > MAX_BYTES_PER_VALUE:
            raise CostModelError(f"profile {profile.name}: rates below {MIN_RATE:g} a second ({', '.join(rates)}), "
                                 f"latency_s above {MAX_LATENCY_S:g} or bytes per value above {MAX_BYTES_PER_VALUE} "
                                 "are no hardware")
        return profile

    def as_dict(self) -> dict:
        return {**asdict(self), "sources": list(self.sources)}


def profile_names() -> list[str]:
    """The shipped profiles, by file name without .json."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.json"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name, or a profile file; CostModelError otherwise."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise CostModelError(f"no hardware profile {name_or_path!r} (shipped: {', '.join(profile_names())})")
    try:
        values = json.loads(path.read_text())
    except OSError as exc:
        raise CostModelError(f"cannot read the profile {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CostModelError(f"{path}: not JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(values, dict):
        raise CostModelError(f"{path}: a profile is a JSON object")
    return HardwareProfile.from_dict(values)


def contiguous_placement(num_layers: int, num_logical: int, num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The static baseline: each expert once, expert e on GPU e * G // E (contiguous
    blocks, as many experts per GPU as E / G allows). Returns (gpu_of_expert [L, E],
    logcnt [L, E] of ones, slot counts per GPU)."""
    gpu_of_expert = (torch.arange(num_logical) * num_gpus // num_logical).expand(num_layers, -1)
    return gpu_of_expert, torch.ones(num_layers, num_logical, dtype=torch.int64), \
        torch.bincount(gpu_of_expert[0], minlength=num_gpus).tolist()


def compute_seconds(pairs: torch.Tensor, gpu_of_slot: torch.Tensor, num_gpus: int, shape: ExpertShape,
                    profile: HardwareProfile) -> torch.Tensor:
    """pairs: [L, S] token-expert pairs of each slot in one step, gpu_of_slot: [L, S]
    -> [L, num_gpus] seconds of expert compute (module docstring: the roofline per slot)."""
    flops_time = pairs * (shape.flops_per_pair / profile.flops_per_s)
    weight_time = (pairs > 0).double() * (shape.weight_bytes / profile.hbm_bytes_per_s)
    per_slot = torch.maximum(flops_time, weight_time)
    out = torch.zeros(pairs.shape[0], num_gpus, dtype=torch.float64, device=pairs.device)
    return out.scatter_add_(1, gpu_of_slot.to(pairs.device), per_slot)


def transfer_seconds(gpu_pairs: torch.Tensor, remote_share: torch.Tensor, num_gpus: int, shape: ExpertShape,
                     profile: HardwareProfile, bytes_per_value: float) -> torch.Tensor:
    """gpu_pairs: [L, G] pairs each GPU serves; remote_share: [L] network sends per pair
    -> [L, G] seconds of one all-to-all (dispatch or combine) at `bytes_per_value`."""
    token_bytes = shape.hidden_size * bytes_per_value
    nvlink = gpu_pairs * (1 - 1 / num_gpus) * token_bytes / profile.nvlink_bytes_per_s
    network = gpu_pairs * remote_share.unsqueeze(-1) * token_bytes / profile.network_bytes_per_s
    return torch.maximum(nvlink, network)


def step_seconds(step_load: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int, num_nodes: int,
                 shape: ExpertShape, profile: HardwareProfile, routing: tuple[int, int, int]) -> dict[str, float]:
    """The modeled time of one MoE step (all layers) under a placement.

    Args:
        step_load: [L, E] token-expert pairs of one step; phy2log: [L, R]; logcnt: [L, E].
    Returns:
        {"step_s", "compute_s", "dispatch_s", "combine_s"}: the step and its parts, each
        the sum over layers of the slowest GPU's.
    """
    return summed(layer_seconds(step_load, phy2log, logcnt, num_gpus, num_nodes, shape, profile, routing))


def layer_seconds(load: torch.Tensor, phy2log: torch.Tensor, logcnt: torch.Tensor, num_gpus: int, num_nodes: int,
                  shape: ExpertShape, profile: HardwareProfile, routing: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """load: [L, E] pairs of one step per layer (or of many steps' layers stacked);
    phy2log: [L, R]; logcnt: [L, E] -> {"step_s", "compute_s", "dispatch_s",
    "combine_s"}: [L] each, the slowest GPU's part of each layer (step_s with latency)."""
    load = load.double()
    pairs = slot_loads(load, phy2log, logcnt)                                   # [L, R]
    slots_per_gpu = phy2log.shape[1] // num_gpus
    gpu_of_slot = (torch.arange(phy2log.shape[1], device=load.device) // slots_per_gpu).expand(phy2log.shape[0], -1)
    return _layer_times(pairs, gpu_of_slot, num_gpus,
                        layer_remote_shares(load, phy2log, logcnt, num_nodes, *routing), shape, profile)


def contiguous_step_seconds(step_load: torch.Tensor, num_gpus: int, num_nodes: int, shape: ExpertShape,
                            profile: HardwareProfile, routing: tuple[int, int, int]) -> dict[str, float]:
    """step_seconds of the static baseline (contiguous_placement, no redundancy).
    step_load: [L, E]."""
    return summed(contiguous_layer_seconds(step_load, num_gpus, num_nodes, shape, profile, routing))


def contiguous_layer_seconds(load: torch.Tensor, num_gpus: int, num_nodes: int, shape: ExpertShape,
                             profile: HardwareProfile, routing: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """layer_seconds of the static baseline (contiguous_placement, no redundancy). load: [L, E]."""
    layers, experts = load.shape
    gpu_of_expert, _, _ = contiguous_placement(layers, experts, num_gpus)
    gpu_of_expert = gpu_of_expert.to(load.device)
    load = load.double()
    experts_of = torch.arange(experts, device=load.device).expand(layers, -1)
    remote = remote_shares(load, experts_of, gpu_of_expert * num_nodes // num_gpus, experts, num_nodes, *routing)
    return _layer_times(load, gpu_of_expert, num_gpus, remote, shape, profile)


def summed(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer parts ([L] each) -> their sums over the layers, as floats."""
    return {name: float(value.sum()) for name, value in parts.items()}


def _layer_times(pairs: torch.Tensor, gpu_of_slot: torch.Tensor, num_gpus: int, remote_share: torch.Tensor,
                 shape: ExpertShape, profile: HardwareProfile) -> dict[str, torch.Tensor]:
    """pairs, gpu_of_slot: [L, S]; remote_share: [L] -> the parts of each layer, [L] each
    (layer_seconds)."""
    compute = compute_seconds(pairs, gpu_of_slot, num_gpus, shape, profile)
    gpu_pairs = torch.zeros(pairs.shape[0], num_gpus, dtype=torch.float64, device=pairs.device)
    gpu_pairs = gpu_pairs.scatter_add_(1, gpu_of_slot, pairs)
    dispatch = transfer_seconds(gpu_pairs, remote_share, num_gpus, shape, profile, profile.dispatch_bytes_per_value)
    combine = transfer_seconds(gpu_pairs, remote_share, num_gpus, shape, profile, profile.combine_bytes_per_value)
    parts = {"compute_s": compute.max(-1).values, "dispatch_s": dispatch.max(-1).values,
             "combine_s": combine.max(-1).values}
    return {"step_s": sum(parts.values()) + 2 * profile.latency_s, **parts}


def held_experts(phy2log: torch.Tensor, num_bins: int, num_logical: int) -> torch.Tensor:
    """phy2log: [L, R] -> [L, num_bins, num_logical] bool: whether each bin (a GPU or a
    node, slots in bin-major order) holds a replica of each expert."""
    layers, slots = phy2log.shape
    bin_of_slot = (torch.arange(slots, device=phy2log.device) * num_bins // slots).expand(layers, -1)
    held = torch.zeros(layers, num_bins * num_logical, dtype=torch.bool, device=phy2log.device)
    held[torch.arange(layers, device=phy2log.device).unsqueeze(-1), bin_of_slot * num_logical + phy2log] = True
    return held.view(layers, num_bins, num_logical)


def migration_seconds(phy2log: torch.Tensor, prev_phy2log: torch.Tensor, num_gpus: int, num_nodes: int,
                      num_logical: int, shape: ExpertShape, profile: HardwareProfile,
                      overlapped: bool = False) -> dict[str, float]:
    """The cost of moving from prev_phy2log to phy2log (both [L, R]).

    A GPU receives each expert it newly holds (in any of its slots, once): over NVLink
    when some GPU of its node held it before, else over the network at
    migration_bytes_per_s. Reordering a GPU's own experts among its slots is a local
    copy and free. All GPUs receive at once, each link of a GPU at its own rate, so the
    rebalance takes the slowest GPU's max(NVLink bytes / nvlink rate, network bytes /
    migration rate); when `overlapped`, the profile's overlap_share of it is hidden.

    Returns:
        moved_slots: slots whose expert changed; received_experts: the (GPU, expert)
        copies made; moved_bytes: their bytes; migration_s.
    """
    prev_phy2log = prev_phy2log.to(phy2log.device)
    new_on_gpu = held_experts(phy2log, num_gpus, num_logical)
    received = new_on_gpu & ~held_experts(prev_phy2log, num_gpus, num_logical)          # [L, G, E]
    node_of_gpu = torch.arange(num_gpus, device=phy2log.device) * num_nodes // num_gpus
    in_node_before = held_experts(prev_phy2log, num_nodes, num_logical)[:, node_of_gpu]  # [L, G, E]
    over_nvlink = (received & in_node_before).sum((0, 2)).double()                      # [G]
    over_network = (received & ~in_node_before).sum((0, 2)).double()
    seconds = float(torch.maximum(over_nvlink / profile.nvlink_bytes_per_s,
                                  over_network / profile.migration_bytes_per_s).max()) * shape.weight_bytes
    if overlapped:
        seconds *= 1 - profile.overlap_share
    copies = int(received.sum())
    return {"moved_slots": int((phy2log != prev_phy2log).sum()), "received_experts": copies,
            "moved_bytes": copies * shape.weight_bytes, "migration_s": seconds}
