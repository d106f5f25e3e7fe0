"""The result record: the one schema of what `run` and `evaluate` write.

A record is one balancer on one scenario of one dataset, on one device, with the
settings and machine that produced it. Every writer builds a `Record`; every reader
gets one back from `Record.from_json`, which checks each field's type and refuses
NaN and Infinity, so no report has to guess at a field or meet a value it cannot rank.

`identity()` names one measurement: two records with the same identity measured the
same thing, so a later one supersedes an earlier one (`--resume` skips it,
`leaderboard` keeps the later and reports the collision).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

SPLITS = ("public", "heldout")
STATUSES = ("ok", "error", "invalid", "timeout", "crash", "memory")
# How a dataset is scored: plan on window i, score on window i + 1; or, for a collection
# of static workloads with no time order, plan on one workload, score on another.
NEXT_WINDOW, CROSS_WORKLOAD = "next-window", "cross-workload"
PROTOCOLS = (NEXT_WINDOW, CROSS_WORKLOAD)
# A line `evaluate --json` ends with; not a record.
SUMMARY_KEY = "summary"
# Measurements that must be non-negative wherever a record holds one.
NON_NEGATIVE = ("runtime_ms", "runtime_ms_min", "runtime_ms_max", "runtime_ms_iqr", "balancedness_gpu",
                "balancedness_gpu_insample", "balancedness_slot", "balancedness_slot_insample",
                "balancedness_node", "internode_share", "migrated_replicas", "balancedness_ceiling",
                "modeled_step_ms", "migration_ms", "modeled_speedup", "contiguous_step_ms", "oracle_step_ms",
                "oracle_speedup", "replay_runtime_ms")
# Fields of each entry of a record's `replay`, one per rebalance interval.
REPLAY_FIELDS = ("interval", "rebalances", "modeled_step_ms", "migration_ms", "received_experts", "modeled_speedup",
                 "modeled_speedup_overlapped", "break_even_interval")
# Measurements that are shares or balancedness (mean over max): between 0 and 1.
UNIT_INTERVAL = ("balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "balancedness_slot_insample",
                 "balancedness_node", "internode_share", "balancedness_ceiling")
REQUIRED = ("algorithm", "dataset", "status")


class RecordError(ValueError):
    """A record that breaks the schema; the message is one line."""


@dataclass
class Record:
    """One measurement. Fields left None were not measured (or not applicable)."""

    # What was measured: the balancer and its source, the data and its hash, the scenario.
    algorithm: str
    dataset: str
    status: str = "ok"
    error: str | None = None
    source_hash: str | None = None
    data_sha256: str | None = None
    scenario: str = ""
    num_layers: int | None = None
    num_logical: int | None = None
    num_replicas: int | None = None
    num_groups: int | None = None
    num_nodes: int | None = None
    num_gpus: int | None = None
    policy: str | None = None
    # The protocol (PROTOCOLS); under cross-workload, the workload planned on and the one
    # scored (the same one for in-sample). Each pair is a scenario of its own.
    protocol: str | None = None
    plan_workload: str | None = None
    serve_workload: str | None = None
    # How: device, what the balancer planned on, window length, timed calls, migration.
    device: str = "cpu"
    predictor: str = "last"
    window_steps: int | None = None
    repeat: int = 1
    migration: bool = True
    prev_placement: str | None = None
    computed_on: str | None = None
    split: str = "public"
    heldout_seed: int | None = None
    isolation: str | None = None
    isolated: dict | None = None
    # Balance, on the next window (the score) and in-sample (the window planned on).
    windows_scored: int = 0
    balancedness_gpu: float | None = None
    balancedness_gpu_insample: float | None = None
    balancedness_slot: float | None = None
    balancedness_slot_insample: float | None = None
    balancedness_node: float | None = None
    internode_share: float | None = None
    migrated_replicas: float | None = None
    balancedness_ceiling: float | None = None
    optimality_gap: float | None = None
    bound_policy: str | None = None
    balancer_report: list | None = None
    # Modeled serving time (run --cost-model): the hardware profile and its hash, the
    # first rebalance interval's figures, both references, and every interval's entry
    # (eplb_bench.evaluation.replay names the fields).
    cost_model: str | None = None
    cost_model_sha256: str | None = None
    interval: int | None = None
    intervals: list | None = None
    modeled_step_ms: float | None = None
    migration_ms: float | None = None
    modeled_speedup: float | None = None
    contiguous_step_ms: float | None = None
    oracle_step_ms: float | None = None
    oracle_speedup: float | None = None
    replayed_steps: int | None = None
    replay: list | None = None
    replay_runtime_ms: float | None = None
    # Runtime of the timed calls: median and spread, in milliseconds.
    runtime_ms: float | None = None
    runtime_ms_min: float | None = None
    runtime_ms_iqr: float | None = None
    runtime_ms_max: float | None = None
    scores: dict | None = None
    # Who measured: harness version and commit, the machine identity, when.
    eplb_bench_version: str | None = None
    commit: str | None = None
    host: dict = field(default_factory=dict)
    timestamp: str | None = None

    # ------------------------------------------------------------ identity

    def scenario_key(self) -> tuple:
        """The scenario measured: dataset (name and hash), scenario name and shape,
        workload pair, window length (part of the data: None for static workloads), device,
        split and held-out seed. Records of one scenario are ranked together."""
        return (self.dataset, self.data_sha256, self.scenario, self.num_replicas, self.num_groups, self.num_nodes,
                self.num_gpus, self.plan_workload, self.serve_workload, self.window_steps, self.device, self.split,
                self.heldout_seed)

    def balancer_key(self) -> tuple:
        """The balancer measured and the settings that change what it is asked: name,
        source hash, predictor, migration. One entry of the standings."""
        return (self.algorithm, self.source_hash, self.predictor, self.migration)

    def identity(self) -> tuple:
        """What names one measurement (see the module docstring); a replay under another
        profile or other intervals is another measurement."""
        intervals = tuple(self.intervals or ())
        return self.balancer_key() + self.scenario_key() + (self.repeat, self.eplb_bench_version, self.commit,
                                                            self.cost_model, self.cost_model_sha256, intervals)

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One JSON line; RecordError for a value JSON cannot hold exactly (NaN, Infinity)."""
        check_record(self)
        try:
            return json.dumps(self.to_dict(), allow_nan=False)
        except ValueError as exc:
            raise RecordError(f"record of {self.algorithm} on {self.dataset}: {exc}") from None

    @classmethod
    def from_dict(cls, values: typing.Mapping) -> Record:
        """A Record from a mapping, every field's type checked; RecordError otherwise.
        Only algorithm, dataset and status are required; unknown fields are refused."""
        if not isinstance(values, typing.Mapping):
            raise RecordError(f"expected a JSON object, got {type(values).__name__}")
        missing = [name for name in REQUIRED if name not in values]
        if missing:
            raise RecordError(f"record lacks {', '.join(missing)}")
        unknown = sorted(set(values) - set(FIELD_TYPES))
        if unknown:
            raise RecordError(f"unknown field(s) {', '.join(unknown)}")
        for name, value in values.items():
            _check_type(name, value)
        record = cls(**{name: value for name, value in values.items() if value is not None or _nullable(name)})
        check_record(record)
        return record

    @classmethod
    def from_json(cls, text: str) -> Record | None:
        """A Record from one JSON line (None for the summary line of `evaluate --json`)."""
        try:
            values = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise RecordError(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # an integer past Python's digit limit, deep nesting
            raise RecordError(f"unusable JSON: {' '.join(str(exc).split())[:120]}") from None
        if isinstance(values, dict) and set(values) == {SUMMARY_KEY}:
            return None
        return cls.from_dict(values)

    # ------------------------------------------------------------ reading as a mapping

    def __getitem__(self, name: str):
        """Read-only access by field name, for callers that index records like the JSON."""
        if name not in FIELD_TYPES:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default=None):
        value = getattr(self, name, None) if name in FIELD_TYPES else None
        return default if value is None else value

    def __contains__(self, name: str) -> bool:
        return name in FIELD_TYPES

    def keys(self):
        return FIELD_TYPES.keys()


FIELD_TYPES: dict[str, object] = typing.get_type_hints(Record)


def _refuse_constant(name: str):
    raise RecordError(f"{name} is not a measurement")


def _nullable(name: str) -> bool:
    return type(None) in typing.get_args(FIELD_TYPES[name])


def _allowed(name: str) -> tuple[type, ...]:
    hint = FIELD_TYPES[name]
    types = typing.get_args(hint) or (hint,)
    allowed = tuple(typing.get_origin(t) or t for t in types)
    return allowed + ((int,) if float in allowed else ())


def _check_type(name: str, value) -> None:
    allowed = _allowed(name)
    if value is None:
        if name in REQUIRED:
            raise RecordError(f"{name} must not be null")
        return  # a missing value: the field keeps its default
    if isinstance(value, bool) and bool not in allowed:
        raise RecordError(f"{name} must be {_type_names(allowed)}, got a boolean")
    if not isinstance(value, allowed):
        raise RecordError(f"{name} must be {_type_names(allowed)}, got {type(value).__name__}")


def _type_names(allowed: tuple[type, ...]) -> str:
    return " or ".join(dict.fromkeys(t.__name__ for t in allowed if t is not type(None)))


def _number_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is not a number ({type(value).__name__})"
    if not math.isfinite(value):
        return f"is {value}"
    return None


def check_record(record: Record) -> None:
    """RecordError unless every measurement is finite (non-negative where NON_NEGATIVE
    says so), every score finite, and status and split known."""
    for name in REQUIRED:
        _check_type(name, getattr(record, name))
    if record.status not in STATUSES:
        raise RecordError(f"status must be one of {', '.join(STATUSES)}, got {record.status!r}")
    if record.split not in SPLITS:
        raise RecordError(f"split must be one of {', '.join(SPLITS)}, got {record.split!r}")
    if record.protocol is not None and record.protocol not in PROTOCOLS:
        raise RecordError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {record.protocol!r}")
    check_protocol_fields(record)
    if record.split == "heldout" and record.heldout_seed is None:
        raise RecordError("a held-out record needs an integer heldout_seed")
    for name, hint in FIELD_TYPES.items():
        value = getattr(record, name)
        if value is None or float not in _allowed(name):
            continue
        problem = _number_problem(value)
        if problem is None and name in NON_NEGATIVE and value < 0:
            problem = f"is negative ({value})"
        if problem is None and name in UNIT_INTERVAL and value > 1 + 1e-9:   # rounding may pass 1 by an ulp
            problem = f"is above 1 ({value})"
        if problem:
            raise RecordError(f"{name} {problem}")
    check_replay(record.replay)
    for name, value in (record.scores or {}).items():
        problem = None if value is None else _number_problem(value)
        if problem:
            raise RecordError(f"scores.{name} {problem}")


def check_protocol_fields(record: Record) -> None:
    """RecordError unless the workload pair is there exactly under cross-workload, and a
    cross-workload record claims nothing that protocol cannot measure (one window
    scored, no migration, no predictor)."""
    paired = record.plan_workload is not None or record.serve_workload is not None
    if record.protocol != CROSS_WORKLOAD:
        if paired:
            raise RecordError("plan_workload and serve_workload belong to the cross-workload protocol")
        return
    if not (record.plan_workload and record.serve_workload):
        raise RecordError("a cross-workload record names its plan_workload and serve_workload")
    if record.migrated_replicas is not None or record.windows_scored > 1 or record.predictor != "last":
        raise RecordError("a cross-workload record scores one placement on one workload: no migration, "
                          "one window, predictor last")


def check_replay(entries: list | None) -> None:
    """RecordError unless every replay entry holds exactly REPLAY_FIELDS: a positive
    integer interval, a non-negative integer count of rebalances, and finite
    non-negative numbers (break_even_interval may be null)."""
    for entry in entries or ():
        if not isinstance(entry, dict) or set(entry) != set(REPLAY_FIELDS):
            raise RecordError(f"a replay entry holds exactly {', '.join(REPLAY_FIELDS)}")
        for name in ("interval", "rebalances"):
            value = entry[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < (name == "interval"):
                raise RecordError(f"replay.{name} must be an integer of at least {int(name == 'interval')}")
        for name in REPLAY_FIELDS[2:]:
            value = entry[name]
            if value is None and name == "break_even_interval":
                continue
            problem = _number_problem(value) or (f"is negative ({value})" if value < 0 else None)
            if problem:
                raise RecordError(f"replay.{name} {problem}")
