"""The replay under the cost model: hand-computed accounting, the runner's use of it on
load histories and static workloads, and its failures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from eplb_bench import Scenario, get_algorithm
from eplb_bench.cli import main
from eplb_bench.core.contract import Placement
from eplb_bench.core.costmodel import ExpertShape, HardwareProfile, load_profile, migration_seconds, step_seconds
from eplb_bench.core.record import Record, RecordError
from eplb_bench.core.registry import AlgorithmInfo, _keyword_names
from eplb_bench.data.dataset import Dataset, DatasetError
from eplb_bench.data.predictors import Predictor
from eplb_bench.data.steps import synthetic_steps, workload_steps
from eplb_bench.data.synthetic import Phase, SyntheticSpec, all_steps, generate
from eplb_bench.evaluation.replay import (
    CostSettings,
    Deployment,
    Trace,
    contiguous_ms,
    history_load,
    oracle_ms,
    rebalance_steps,
    replay,
)
from eplb_bench.evaluation.runner import Job, run_job, run_records

SHAPE = ExpertShape(hidden_size=10, intermediate_size=10, weight_bytes_per_param=1.0)
# Compute is free here: a step costs its all-to-alls alone.
TRANSFERS_ONLY = HardwareProfile.from_dict({
    "name": "transfers", "description": "hand-computed", "gpus_per_node": 2, "flops_per_s": 1e30,
    "hbm_bytes_per_s": 1e30, "nvlink_bytes_per_s": 1e9, "network_bytes_per_s": 1e9, "dispatch_bytes_per_value": 1,
    "combine_bytes_per_value": 2, "latency_s": 0.0, "migration_bytes_per_s": 1e6, "overlap_share": 0.25})
ONE_NODE = Deployment(num_gpus=2, num_nodes=1, routing=(1, 1, 1), shape=SHAPE, profile=TRANSFERS_ONLY)


def placement(phy2log: list[int], num_logical: int = 2) -> Placement:
    phy2log = torch.tensor([phy2log])
    logcnt = torch.bincount(phy2log[0], minlength=num_logical).unsqueeze(0)
    return Placement(phy2log, torch.zeros(1, num_logical, 1, dtype=torch.int64), logcnt)


# Steps [T=4, L=1, E=2]; step 0 is history only.
STEPS = torch.tensor([[[4, 0]], [[3, 1]], [[3, 1]], [[1, 3]]])
# Both copies of each expert on one GPU; then one copy of each expert on each GPU.
APART, MIXED = placement([0, 0, 1, 1]), placement([0, 1, 0, 1])


def test_a_replay_by_hand():
    # A step costs max_g pairs x (1/2 x 10 B dispatch + 1/2 x 20 B combine) / 1 GB/s = 15 ns per pair.
    calls = []

    def plan_at(step, current):
        calls.append((step, current.clone()))
        return MIXED

    trace = Trace(STEPS, start=1, history_steps=1)
    baseline = contiguous_ms(trace, ONE_NODE)
    assert baseline == pytest.approx(3 * 15e-9 * 1e3)          # peaks 3, 3, 3
    entry = replay(trace, 2, APART, plan_at, ONE_NODE, baseline)
    assert [step for step, _ in calls] == [3] and torch.equal(calls[0][1], APART.phy2log)
    # Steps 1 and 2 under APART (peaks 3, 3), step 3 under MIXED (peak 2): 40 ns a step.
    assert entry["modeled_step_ms"] == pytest.approx(40e-9 * 1e3)
    # Each GPU receives the other's expert inside the node: 300 B at 1 GB/s.
    assert entry["migration_ms"] == pytest.approx(300e-9 * 1e3)
    assert entry["rebalances"] == 1 and entry["received_experts"] == 2
    assert entry["modeled_speedup"] == pytest.approx(45e-9 / (40e-9 + 300e-9 / 3))
    assert entry["modeled_speedup_overlapped"] == pytest.approx(45e-9 / (40e-9 + 0.75 * 300e-9 / 3))
    # 300 ns of migration over 5 ns gained a step.
    assert entry["break_even_interval"] == pytest.approx(60.0)
    assert oracle_ms(trace, [(1, MIXED)], ONE_NODE) == pytest.approx(30e-9 * 1e3)


def test_an_interval_past_the_end_never_rebalances():
    trace = Trace(STEPS, start=1, history_steps=1)
    baseline = contiguous_ms(trace, ONE_NODE)

    def never(step, current):
        raise AssertionError("no rebalance expected")
    entry = replay(trace, 10, APART, never, ONE_NODE, baseline)
    assert entry["rebalances"] == 0 and entry["migration_ms"] == 0.0 and entry["modeled_speedup"] == pytest.approx(1.0)
    assert entry["break_even_interval"] is None


def test_rebalance_steps_and_history():
    trace = Trace(torch.arange(10).view(10, 1, 1).expand(10, 1, 2).contiguous(), start=2, history_steps=2)
    assert rebalance_steps(trace, 3) == [5, 8]
    assert history_load(trace, 5, Predictor()).tolist() == [[3 + 4, 3 + 4]]
    # ema:0.5 over the windows [0, 1), [1, 3), [3, 5) ending at step 5, oldest first.
    smoothed = 0.5 * 7 + 0.5 * (0.5 * 3 + 0.5 * 0)
    assert history_load(trace, 5, Predictor("ema", 0.5)).tolist() == [[smoothed, smoothed]]


def test_the_replay_matches_a_loop_over_step_seconds():
    generator = torch.Generator().manual_seed(3)
    steps = torch.randint(0, 40, (9, 2, 4), generator=generator)
    deployment = Deployment(4, 2, (2, 1, 1), SHAPE, load_profile("h200-nvlink-ib400"))
    first, second = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]] * 2), torch.tensor([[3, 2, 1, 0, 3, 0, 1, 1]] * 2)
    plans = {"first": Placement(first, None, torch.tensor([[2, 2, 2, 2]] * 2)),
             "second": Placement(second, None, torch.tensor([[2, 3, 1, 2]] * 2))}
    trace = Trace(steps, start=3, history_steps=3)
    entry = replay(trace, 4, plans["first"], lambda step, current: plans["second"], deployment,
                   contiguous_ms(trace, deployment))
    in_service = [plans["first"]] * 4 + [plans["second"]] * 2       # steps 3-6, then 7-8
    expected = [step_seconds(steps[3 + i], p.phy2log, p.logcnt, 4, 2, SHAPE, deployment.profile, (2, 1, 1))["step_s"]
                for i, p in enumerate(in_service)]
    assert entry["modeled_step_ms"] == pytest.approx(sum(expected) / 6 * 1e3)
    moved = migration_seconds(second, first, 4, 2, 4, SHAPE, deployment.profile)
    assert entry["migration_ms"] == pytest.approx(moved["migration_s"] * 1e3)


# ---------------------------------------------------------------- the runner

SCENARIO = Scenario(num_replicas=12, num_groups=4, num_nodes=2, num_gpus=4)
TINY = SyntheticSpec(2, 8, 2, tokens_per_step=64, decode_tokens_per_step=32, window_steps=5, route_tokens=64,
                     phases=(Phase(2, 0, "prefill"), Phase(2, 1, "prefill")), seed=11)
COST = CostSettings(load_profile("h200-nvlink-ib400"), (5,))


def tiny_dataset(spec: SyntheticSpec = TINY) -> Dataset:
    windows, _ = generate(spec)
    return Dataset(name="tiny", windows=torch.from_numpy(windows), num_groups=4, scenarios=[SCENARIO],
                   window_steps=spec.window_steps, meta={"model": "DeepSeek-V3 / R1", "generator": spec.as_dict()})


def counting(prev_aware: bool = False):
    """deepseek, counting its calls (warm-up and stand-ins included)."""
    deepseek = get_algorithm("deepseek")
    calls = []

    def balancer(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None):
        calls.append(weight.clone())
        return deepseek(weight, num_replicas, num_groups, num_nodes, num_gpus)

    if not prev_aware:
        def balancer_plain(weight, num_replicas, num_groups, num_nodes, num_gpus):
            return balancer(weight, num_replicas, num_groups, num_nodes, num_gpus)
        return AlgorithmInfo(name="counting", function=balancer_plain), calls
    return AlgorithmInfo(name="counting", function=balancer, accepts=_keyword_names(balancer)), calls


def test_steps_regenerate_and_sum_to_the_windows():
    dataset = tiny_dataset()
    steps = synthetic_steps(dataset)
    assert steps.shape == (20, 2, 8)
    assert torch.equal(steps.view(4, 5, 2, 8).sum(1, dtype=torch.int64), dataset.windows)
    assert np.array_equal(all_steps(TINY), steps.numpy())
    tampered = dataclasses.replace(dataset, windows=dataset.windows + 1)
    with pytest.raises(DatasetError, match="do not sum to the stored windows"):
        synthetic_steps(tampered)


def test_at_one_window_the_replay_reuses_the_runs_plans():
    dataset = tiny_dataset()
    algorithm, calls = counting()
    plain = run_job(Job(algorithm, dataset, SCENARIO))
    runs_calls = len(calls)
    calls.clear()
    record = run_job(Job(algorithm, dataset, SCENARIO, cost=COST))
    # One more call: the oracle's plan on the last window, which the run never plans on.
    assert len(calls) == runs_calls + 1
    assert record.status == "ok" and record.balancedness_gpu == plain.balancedness_gpu
    entry = record.replay[0]
    assert record.interval == 5 and entry["rebalances"] == 2 and record.replayed_steps == 15
    # Brute force: plan i (on window i) serves window i + 1's steps.
    steps = synthetic_steps(dataset)
    deepseek = get_algorithm("deepseek")
    seconds = []
    for window in range(1, 4):
        phy2log, _, logcnt = deepseek(dataset.windows[window - 1], 12, 4, 2, 4)
        seconds += [step_seconds(steps[window * 5 + i], phy2log, logcnt, 4, 2, dataset_shape(), COST.profile,
                                 (2, 1, 1))["step_s"] for i in range(5)]
    assert record.modeled_step_ms == pytest.approx(sum(seconds) / 15 * 1e3)
    assert record.modeled_speedup == pytest.approx(entry["modeled_speedup"])
    assert record.oracle_speedup == pytest.approx(record.contiguous_step_ms / record.oracle_step_ms)
    assert record.cost_model == "h200-nvlink-ib400" and len(record.cost_model_sha256) == 64


def dataset_shape():
    from eplb_bench.data.models import expert_shape
    return expert_shape("DeepSeek-V3 / R1")


def test_other_intervals_plan_on_their_own_histories_once_each():
    dataset = tiny_dataset()
    algorithm, calls = counting()
    run_job(Job(algorithm, dataset, SCENARIO))
    runs_calls = len(calls)
    calls.clear()
    record = run_job(Job(algorithm, dataset, SCENARIO, cost=dataclasses.replace(COST, intervals=(3, 10, 5))))
    # Interval 3 rebalances at steps 8, 11, 14, 17 (11 ... new histories, none at a window's end);
    # 10 at step 15, a window's end: the run's plan. Plus the oracle's last window.
    assert len(calls) == runs_calls + 4 + 1
    assert [entry["interval"] for entry in record.replay] == [3, 10, 5] and record.interval == 3
    assert [entry["rebalances"] for entry in record.replay] == [4, 1, 2]
    steps = synthetic_steps(dataset)
    assert any(torch.equal(call, steps[3:8].sum(0, dtype=torch.int64)) for call in calls)   # history at step 8


def test_the_placement_in_service_is_handed_to_the_replays_plans():
    dataset = tiny_dataset()
    algorithm, calls = counting(prev_aware=True)
    record = run_job(Job(algorithm, dataset, SCENARIO, cost=dataclasses.replace(COST, intervals=(10,))))
    assert record.status == "ok" and record.replay[0]["rebalances"] == 1
    # The chain differs from the run's (window 0's plan, not window 1's, is in service), so step 15 is
    # planned anew, before the oracle's call on the last window.
    steps = synthetic_steps(dataset)
    assert torch.equal(calls[-2], steps[10:15].sum(0, dtype=torch.int64))
    assert torch.equal(calls[-1], dataset.windows[3])


def test_every_call_comes_in_step_order_and_the_oracle_last():
    dataset = tiny_dataset()
    steps = synthetic_steps(dataset)
    # The step each known input ends at: a window's end, or a replay history's.
    ends = {bytes(steps[max(0, t - 5):t].sum(0, dtype=torch.int64).numpy()): t for t in range(1, 21)}
    algorithm, calls = counting(prev_aware=True)
    record = run_job(Job(algorithm, dataset, SCENARIO, cost=dataclasses.replace(COST, intervals=(3, 7, 5))))
    assert record.status == "ok"
    stamps = [ends[bytes(call.numpy())] for call in calls if bytes(call.numpy()) in ends]
    assert stamps[-1] == 20                       # the oracle's plan on the last window, last
    assert stamps[:-1] == sorted(stamps[:-1]) and len(stamps) > 8
    assert max(stamps[:-1]) < 20


def test_a_balancer_that_edits_the_placement_it_is_handed_is_invalid():
    deepseek = get_algorithm("deepseek")

    def scribbles(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None):
        if prev_phy2log is not None:
            prev_phy2log.zero_()       # would make every stored placement one expert's
        return deepseek(weight, num_replicas, num_groups, num_nodes, num_gpus)

    algorithm = AlgorithmInfo("scribbles", scribbles, accepts=_keyword_names(scribbles))
    record = run_job(Job(algorithm, tiny_dataset(), SCENARIO, cost=COST))
    assert record.status == "invalid" and "modified its prev_phy2log" in record.error


def test_a_balancer_failing_in_the_replay_fails_the_record_and_keeps_its_balance():
    dataset = tiny_dataset()
    deepseek = get_algorithm("deepseek")
    windows = {bytes(w.numpy()) for w in dataset.windows}

    def only_windows(weight, *args):
        if bytes(weight.numpy()) not in windows and weight.sum() == dataset.windows[0].sum():
            raise RuntimeError("never saw this history")
        return deepseek(weight, *args)

    record = run_job(Job(AlgorithmInfo("picky", only_windows), dataset, SCENARIO,
                         cost=dataclasses.replace(COST, intervals=(3,))))
    assert record.status == "error" and record.error.startswith("replay: step 8: RuntimeError")
    assert record.balancedness_gpu is not None and record.modeled_speedup is None
    # Still a record of the replay: ranked (as failed) in its profile's modeled standings.
    assert record.cost_model == "h200-nvlink-ib400" and record.intervals == [3]


def test_a_replay_is_another_measurement_than_a_plain_run():
    from eplb_bench.evaluation.runner import job_records

    job = Job(AlgorithmInfo("deepseek", get_algorithm("deepseek")), tiny_dataset(), SCENARIO)
    plain, replayed = job_records(job)[0], job_records(dataclasses.replace(job, cost=COST))[0]
    other = job_records(dataclasses.replace(job, cost=dataclasses.replace(COST, intervals=(5, 10))))[0]
    assert len({plain.identity(), replayed.identity(), other.identity()}) == 3
    assert replayed.cost_model == "h200-nvlink-ib400" and other.intervals == [5, 10] and other.interval == 5


def test_static_workloads_replay_with_plans_shared_between_pairs():
    generator = torch.Generator().manual_seed(5)
    windows = torch.randint(1, 200, (3, 2, 8), generator=generator)
    workloads = [{"name": n, "stage": s} for n, s in (("a", "prefill"), ("b", "prefill"), ("c", "decode"))]
    dataset = Dataset(name="static", windows=windows, num_groups=4, scenarios=[SCENARIO], window_steps=None, meta={
        "model": "DeepSeek-V3 / R1", "protocol": "cross-workload", "workloads": workloads,
        "pairs": [["a", "b"], ["c", "b"]], "top_k": 2,
        "replay": {"steps": 12, "history_steps": 3, "tokens_per_step": {"prefill": 64, "decode": 16},
                   "concentration": 50.0, "seed": 1}})
    drawn = workload_steps(dataset, 1)
    assert drawn.shape == (15, 2, 8) and torch.equal(drawn, workload_steps(dataset, 1))
    assert int(drawn[0].sum()) == 2 * 64 * 2       # layers x tokens x top-k
    algorithm, calls = counting()
    records = run_records(Job(algorithm, dataset, SCENARIO, cost=dataclasses.replace(COST, intervals=(6,))))
    assert [r.status for r in records] == ["ok"] * 5
    # Planning: warm-up + 3 workloads. Replays: a rebalance at step 9 (start 3 + 6), on the served
    # workload alone, so pairs serving b share it: b (in-sample), a -> b, c -> b; a and c once each.
    assert len(calls) == 1 + 3 + 3
    a_to_b = next(r for r in records if (r.plan_workload, r.serve_workload) == ("a", "b"))
    b_alone = next(r for r in records if (r.plan_workload, r.serve_workload) == ("b", "b"))
    assert a_to_b.contiguous_step_ms == b_alone.contiguous_step_ms
    assert a_to_b.oracle_step_ms == b_alone.oracle_step_ms and a_to_b.replayed_steps == 12


# ---------------------------------------------------------------- records and the command line


def test_replay_entries_are_checked():
    dataset = tiny_dataset()
    record = run_job(Job(AlgorithmInfo("deepseek", get_algorithm("deepseek")), dataset, SCENARIO, cost=COST))
    again = Record.from_json(record.to_json())
    assert again == record
    assert again.identity() != dataclasses.replace(record, replay=None, cost_model=None).identity()
    broken = json.loads(record.to_json())
    broken["replay"][0]["migration_ms"] = -1.0
    with pytest.raises(RecordError, match="replay.migration_ms is negative"):
        Record.from_dict(broken)
    del broken["replay"][0]["migration_ms"]
    with pytest.raises(RecordError, match="a replay entry holds exactly"):
        Record.from_dict(broken)


@pytest.mark.parametrize("arguments, code, message", [
    (["--interval", "10"], 2, "--interval needs --cost-model PROFILE"),
    (["--cost-model", "h200-nvlink-ib400", "--interval", "0"], 2, "--interval: expected positive step counts"),
    (["--cost-model", "h200-nvlink-ib400", "--interval", "ten"], 2, "--interval: expected positive step counts"),
    (["--cost-model", "no-such-gpu"], 1, "no hardware profile 'no-such-gpu'"),
    (["--cost-model", "h200-nvlink-ib400", "--interval", "1_000"], 2, "--interval: expected positive step counts"),
    (["--cost-model", "h200-nvlink-ib400", "--replicas", "16", "--gpus", "8", "--nodes", "2"], 2,
     "has 4 GPUs per node, the profile 8"),
])
def test_bad_cost_model_arguments_are_one_line(capsys, arguments, code, message):
    assert main(["run", "--algorithms", "fast", "--datasets", "mixtral-8x7b", *arguments]) == code
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_a_dataset_without_steps_is_refused_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "loads.npz"
    np.savez(path, windows=np.ones((3, 2, 8), dtype=np.int64))
    assert main(["run", "--algorithms", "fast", "--datasets", str(path), "--cost-model", "h200-nvlink-ib400",
                 "--replicas", "12", "--gpus", "4"]) == 1
    error = capsys.readouterr().err.strip()
    assert "loads: no expert shape for model None" in error and len(error.splitlines()) == 1


def test_a_dataset_with_a_shape_but_no_steps_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "loads.npz", windows=np.ones((3, 2, 8), dtype=np.int64))
    manifest = {"name": "loads", "file": "loads.npz", "model": "DeepSeek-V3 / R1", "num_groups": 4,
                "scenarios": [{"name": "s", "num_replicas": 12, "num_groups": 4, "num_nodes": 2, "num_gpus": 4}]}
    (tmp_path / "loads.json").write_text(json.dumps(manifest))
    assert main(["run", "--algorithms", "fast", "--datasets", str(tmp_path / "loads.json"),
                 "--cost-model", "h200-nvlink-ib400"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--cost-model: loads has no per-step loads" in error and len(error.splitlines()) == 1


def test_a_malformed_expert_shape_in_a_manifest_is_one_line(tmp_path, capsys):
    np.savez(tmp_path / "loads.npz", windows=np.ones((3, 2, 8), dtype=np.int64))
    manifest = {"name": "loads", "file": "loads.npz", "expert_shape": {"hidden_size": -1}}
    (tmp_path / "loads.json").write_text(json.dumps(manifest))
    assert main(["run", "--algorithms", "fast", "--datasets", str(tmp_path / "loads.json")]) == 1
    error = capsys.readouterr().err.strip()
    assert "expert_shape: hidden_size and intermediate_size must be positive integers" in error


# ---------------------------------------------------------------- reports


def replayed(algorithm: str, scenario: str, speedups: dict[int, float], status: str = "ok") -> Record:
    entries = [{"interval": k, "rebalances": 1, "modeled_step_ms": 10.0 / v, "migration_ms": 1.0,
                "received_experts": 5.0, "modeled_speedup": v, "modeled_speedup_overlapped": v,
                "break_even_interval": None} for k, v in speedups.items()]
    return Record(algorithm=algorithm, dataset="d", scenario=scenario, status=status, num_replicas=12, num_gpus=4,
                  cost_model="p", cost_model_sha256="f" * 64, interval=entries[0]["interval"],
                  modeled_speedup=entries[0]["modeled_speedup"], contiguous_step_ms=10.0, oracle_step_ms=5.0,
                  oracle_speedup=2.0, replayed_steps=100, replay=entries)


def test_modeled_standings_rank_by_the_geometric_mean_and_complete_entries_first(tmp_path):
    from eplb_bench.reports.leaderboard import leaderboard_markdown, write_leaderboard
    from eplb_bench.reports.modeled import modeled_standings, modeled_tables, speedup_curves

    records = [replayed("a", "s1", {10: 1.2, 100: 1.0}), replayed("a", "s2", {10: 1.5, 100: 1.0}),
               replayed("b", "s1", {10: 1.4, 100: 1.1}), replayed("b", "s2", {10: 1.4, 100: 1.1}),
               replayed("c", "s1", {10: 3.0, 100: 3.0}), replayed("c", "s2", {10: 3.0, 100: 3.0}, status="error")]
    rows = modeled_standings(records, 10)
    assert [row["entry"] for row in rows] == ["b", "a", "c"]
    assert rows[1]["speedup"] == pytest.approx((1.2 * 1.5) ** 0.5) and rows[2]["scenarios_ok"] == 1
    tables = modeled_tables(records)
    assert [table.title for table in tables] == [
        f"Modeled speedup standings: profile p@ffffffff, rebalance every {k} steps" for k in (10, 100)
    ] + ["Break-even rebalance interval"]
    assert ["d s1 (p@ffffffff)", "a", "below 10", "1.200 at 10"] in tables[-1].rows
    curves = speedup_curves(records)
    assert curves["d s1 (p@ffffffff)"]["a"] == [(10, 1.2), (100, 1.0)]
    assert "## Modeled serving time" in leaderboard_markdown(records, "balance")
    plain = [dataclasses.replace(r, cost_model=None, replay=None) for r in records]
    assert "Modeled serving time" not in leaderboard_markdown(plain, "balance")
    paths = write_leaderboard(records, tmp_path)
    assert paths["speedup"].read_bytes().startswith(b"\x89PNG")


def test_every_shipped_manifest_carries_its_models_expert_shape():
    from eplb_bench.data.catalog import load_dataset, shipped_names
    from eplb_bench.data.models import dataset_expert_shape, expert_shape

    for name in shipped_names():
        meta = load_dataset(name).meta
        assert dataset_expert_shape(meta) == expert_shape(meta["model"]), name


def test_break_even_is_read_off_the_curve():
    from eplb_bench.reports.modeled import break_even

    # Crosses 1 halfway (in log) between 10 and 1000: at 100.
    assert break_even([(10, 0.9), (1000, 1.1)]) == "100.0"
    assert break_even([(10, 0.8), (100, 0.9), (1000, 1.0)]) == "1000.0"
    assert break_even([(5, 1.02), (50, 1.1)]) == "below 5"
    assert break_even([(5, 0.7), (50, 0.9)]) == "none up to 50"
    assert break_even([]) == "-"


@pytest.mark.parametrize("change, message", [
    ({"steps": True}, "replay.steps must be a int"),
    ({"steps": 10**9}, "replay steps and history_steps must be 1 to 100000"),
    ({"tokens_per_step": {"prefill": 2**40, "decode": 16}}, "replay.tokens_per_step needs"),
    ({"tokens_per_step": {"prefill": True, "decode": 16}}, "replay.tokens_per_step needs"),
    ({"extra": 1}, "unknown replay setting(s) extra"),
])
def test_malformed_replay_settings_are_one_line(change, message):
    from eplb_bench.data.steps import steps_available

    settings = {"steps": 12, "history_steps": 3, "tokens_per_step": {"prefill": 64, "decode": 16},
                "concentration": 50.0, "seed": 1}
    workloads = [{"name": "a", "stage": "prefill"}, {"name": "c", "stage": "decode"}]
    dataset = Dataset(name="static", windows=torch.ones(2, 2, 8, dtype=torch.int64), num_groups=4,
                      scenarios=[SCENARIO], window_steps=None,
                      meta={"protocol": "cross-workload", "workloads": workloads, "replay": {**settings, **change}})
    reason = steps_available(dataset)
    assert reason is not None and message in reason and "\n" not in reason


def test_a_program_files_static_replays_are_marked():
    from eplb_bench.reports.modeled import STATIC_LEGEND, modeled_tables

    records = [dataclasses.replace(replayed(name, "s1", {10: 1.1}), protocol="cross-workload", plan_workload="a",
                                   serve_workload="b") for name in ("fast", "mine.py")]
    table = modeled_tables(records)[0]
    assert sorted(row[1] for row in table.rows) == ["fast", "mine.py † ‡"] and STATIC_LEGEND in table.note


def test_static_records_say_the_replay_hands_the_placement_on():
    from eplb_bench.evaluation.runner import previous_placement

    algorithm, _ = counting(prev_aware=True)
    dataset = Dataset(name="static", windows=torch.ones(2, 2, 8, dtype=torch.int64), meta={
        "protocol": "cross-workload", "workloads": [{"name": "a"}, {"name": "b"}]})
    job = Job(algorithm, dataset, SCENARIO)
    assert previous_placement(job) == "none (static workloads have no order)"
    assert previous_placement(dataclasses.replace(job, cost=COST)) == \
        "none (static workloads have no order); passed in the replay"
