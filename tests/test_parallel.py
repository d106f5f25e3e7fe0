"""Evaluation at the scale of search: children reused across datasets, `--jobs` and Dask,
the Python entry point and OpenEvolve's evaluator loading ours."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import eplb_bench
from eplb_bench import load_dataset
from eplb_bench.cli import main
from eplb_bench.evaluation import evaluate as evaluate_module
from eplb_bench.evaluation.evaluate import Limits, child_groups, evaluate_programs
from eplb_bench.evaluation.isolation import namespaces_unavailable
from eplb_bench.evaluation.parallel import ExecutorError, open_executor
from eplb_bench.evaluation.sandbox import calibration_widths

from hostile_programs import HONEST_TAIL

GREEDY = Path(__file__).with_name("programs") / "greedy.py"
SIGNATURE = "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
PROGRAMS = {
    "good": HONEST_TAIL + SIGNATURE + "    return honest(weight, num_replicas)\n",
    "raises": SIGNATURE + "    raise ValueError('no placement today')\n",
    "hangs": "import time\n" + SIGNATURE + "    while True:\n        time.sleep(1)\n",
    # Hangs on mixtral's 8 experts only: the other datasets of its child must still be scored.
    "hangs_on_mixtral": HONEST_TAIL + "import time\n" + SIGNATURE
                        + "    while weight.shape[1] == 8:\n        time.sleep(1)\n    return honest(weight, num_replicas)\n",
    "broken": "def rebalance_experts(:\n",
    # Widens its affinity to every core, then says which cores it may run on.
    "widens_affinity": "import os\n" + SIGNATURE + "    os.sched_setaffinity(0, set(range(os.cpu_count())))\n"
                       "    raise RuntimeError(f'cores {sorted(os.sched_getaffinity(0))}')\n",
    # Raises as soon as it is handed a window it has seen before (by the bytes of the loads).
    "seen_before": HONEST_TAIL + "import hashlib\nSEEN = set()\n" + SIGNATURE
                   + "    digest = hashlib.sha256(weight.numpy().tobytes()).hexdigest()\n"
                     "    if digest in SEEN:\n        raise RuntimeError('a window seen before')\n"
                     "    SEEN.add(digest)\n    return honest(weight, num_replicas)\n",
}
# What a record holds that depends on when, where and how fast it was measured.
TIMING_FIELDS = {"runtime_ms", "runtime_ms_min", "runtime_ms_max", "runtime_ms_iqr", "scores", "host", "timestamp",
                 "isolated", "error"}

needs_namespaces = pytest.mark.skipif(bool(namespaces_unavailable()), reason="no isolation by namespaces here")


def write(tmp_path, *names):
    paths = []
    for name in names:
        path = tmp_path / f"{name}.py"
        path.write_text(PROGRAMS[name])
        paths.append(path)
    return paths


def all_targets(*names):
    return [(dataset, scenario) for dataset in map(load_dataset, names) for scenario in dataset.scenarios]


def measured(record) -> dict:
    """A record as a serial run and a parallel one must agree on: timing aside."""
    return {name: value for name, value in record.to_dict().items() if name not in TIMING_FIELDS}


# -- which targets a child may serve ----------------------------------------------------
def fake_target(data: str, windows=4, layers=2, experts=8, replicas=16):
    dataset = SimpleNamespace(sha256=data, num_windows=windows, num_layers=layers, num_logical=experts)
    return dataset, SimpleNamespace(num_replicas=replicas)


def test_no_child_serves_one_dataset_twice_and_every_target_once():
    targets = [fake_target("a"), fake_target("a", replicas=32), fake_target("a", replicas=24), fake_target("b"),
               fake_target("c", windows=40), fake_target("b", replicas=20)]
    for least in (1, 2, 3, 5, 6, 9):
        groups = child_groups(targets, least)
        assert sorted(i for group in groups for i in group) == list(range(len(targets)))
        for group in groups:
            assert group == sorted(group)
            data = [targets[i][0].sha256 for i in group]
            assert len(data) == len(set(data))
        # Dataset a has three scenarios: three children at least; never more than targets.
        assert len(groups) == min(max(3, least), len(targets))


def test_the_work_is_spread_over_the_children():
    # One heavy target and four light ones of other datasets, two children: the heavy one alone.
    targets = [fake_target("heavy", windows=100)] + [fake_target(name) for name in "abcd"]
    assert child_groups(targets, 2) == [[0], [1, 2, 3, 4]]
    assert child_groups([], 4) == []


def test_calibration_widths_keep_the_narrowest_doublings_and_the_widest():
    assert calibration_widths(8, 16) == [2, 4, 9]          # 8 is within 25% of 9
    assert calibration_widths(256, 288) == [2, 4, 8, 16, 33]  # 32 is within 25% of 33
    assert calibration_widths(128, 128) == [1]
    assert calibration_widths(64, 288) == [5, 10, 20, 40, 80, 160, 225]  # 160 is 71% of 225


# -- one child for several datasets -------------------------------------------------------
@needs_namespaces
def test_a_child_is_never_handed_a_window_twice(tmp_path, monkeypatch):
    """deepseek-v3 has two scenarios on the same windows: they go to different children,
    so a program that remembers every window never meets one again."""
    [path] = write(tmp_path, "seen_before")
    targets = all_targets("deepseek-v3", "mixtral-8x7b")
    [records] = evaluate_programs([path], targets, Limits(timeout=20))
    assert [r.status for r in records] == ["ok"] * 3, [r.error for r in records]
    assert {r.isolated["shapes_served"] for r in records} == {2, 1}
    # The control: one child for all three would hand it deepseek-v3's windows twice.
    monkeypatch.setattr(evaluate_module, "child_groups", lambda targets, least=1: [list(range(len(targets)))])
    [records] = evaluate_programs([path], targets, Limits(timeout=20))
    assert [r.status for r in records].count("error") == 1
    assert "a window seen before" in next(r.error for r in records if r.status == "error")


@needs_namespaces
def test_a_reused_child_scores_as_fresh_children_do(tmp_path, monkeypatch):
    targets = all_targets("mixtral-8x7b", "gpt-oss-120b", "qwen3-30b")
    [shared] = evaluate_programs([GREEDY], targets, Limits(timeout=30))
    monkeypatch.setattr(evaluate_module, "child_groups", lambda targets, least=1: [[i] for i in range(len(targets))])
    [fresh] = evaluate_programs([GREEDY], targets, Limits(timeout=30))
    assert [measured(r) for r in shared] == [measured(r) for r in fresh]
    assert all(r.status == "ok" for r in shared)
    # Each record keeps the calibration of its own shape and the timing of its own calls.
    for record, (dataset, scenario) in zip(shared, targets):
        sizes = [size for size, _ in record.isolated["calibration_ms"]["plain"]]
        widest = scenario.num_replicas - dataset.num_logical + 1
        assert sizes[-1] == 8 * dataset.num_layers * (scenario.num_replicas + dataset.num_logical * (widest + 1))
    # ... and the round trips of its own calls: mixtral's tiny windows take the least.
    trips = [record.isolated["roundtrip_ms"] for record in shared]
    assert len(set(trips)) == len(trips) and min(trips) == trips[0]


@needs_namespaces
def test_a_child_that_hangs_on_one_dataset_costs_that_dataset_only(tmp_path):
    [path] = write(tmp_path, "hangs_on_mixtral")
    targets = all_targets("mixtral-8x7b", "gpt-oss-120b")
    assert len(child_groups(targets)) == 1   # both in one child
    [records] = evaluate_programs([path], targets, Limits(timeout=3))
    assert [r.status for r in records] == ["timeout", "ok"], [r.error for r in records]


@needs_namespaces
def test_a_program_that_cannot_load_is_started_once(tmp_path):
    [path] = write(tmp_path, "broken")
    started = time.monotonic()
    [records] = evaluate_programs([path], all_targets("mixtral-8x7b", "gpt-oss-120b", "qwen3-235b"), Limits(timeout=20))
    assert [r.status for r in records] == ["error"] * 3
    assert all("SyntaxError" in r.error and r.error.startswith("start:") for r in records)
    assert time.monotonic() - started < 15


# -- local processes and Dask ---------------------------------------------------------------
def test_run_with_two_jobs_records_what_a_serial_run_does(tmp_path, capsys):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two cores needed")
    common = ["run", "--algorithms", "fast,seed,refined_packing", "--datasets", "mixtral-8x7b,qwen3-30b", "--quiet", "--json"]
    assert main(common) == 0
    serial = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(common + ["--jobs", "2"]) == 0
    parallel = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    key = lambda r: (r["algorithm"], r["dataset"], r["scenario"])  # noqa: E731
    assert sorted(map(key, serial)) == sorted(map(key, parallel)) and len(serial) == 9
    by_key = {key(r): r for r in serial}
    for record in parallel:
        alone = by_key[key(record)]
        assert {k: v for k, v in record.items() if k not in TIMING_FIELDS} == \
               {k: v for k, v in alone.items() if k not in TIMING_FIELDS}
        assert record["host"]["concurrent_jobs"] == 2 and len(record["host"]["cpu_affinity"]) == 1
        assert alone["host"]["concurrent_jobs"] == 1
    assert {r["host"]["cpu_affinity"][0] for r in parallel} == set(sorted(os.sched_getaffinity(0))[:2])


@pytest.mark.parametrize("arguments, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--jobs", "4096"], "core(s) this process may use"),
    (["--executor", "tcp://localhost:1"], "--executor expects dask://HOST:PORT"),
    (["--executor", "dask://127.0.0.1:9"], "no Dask scheduler at dask://127.0.0.1:9"),
])
def test_bad_parallel_arguments_are_one_line_usage_errors(arguments, message, capsys):
    code = main(["run", "--algorithms", "fast", "--datasets", "mixtral-8x7b", "--quiet"] + arguments)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


@needs_namespaces
def test_a_pinned_job_keeps_its_program_on_its_core(tmp_path):
    """A worker of --jobs is pinned to one core; its sandbox is confined there by a cpuset
    cgroup, so a program that widens its affinity still runs on that core alone."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two cores needed")
    [path] = write(tmp_path, "widens_affinity")
    [records] = evaluate_programs([path], all_targets("mixtral-8x7b", "gpt-oss-120b"), Limits(timeout=20), jobs=2)
    for record in records:
        if not record.isolated["caps"]["cpus"].startswith("cpuset cgroup"):
            pytest.skip(f"no cpuset cgroup here: {record.isolated['caps']['cpus']}")
        assert record.status == "error" and record.isolated["caps"]["cpus"] == f"cpuset cgroup {record.host['cpu_affinity']}"
        assert f"cores {record.host['cpu_affinity']}" in record.error and len(record.host["cpu_affinity"]) == 1
        assert record.host["threads"] == 1


def test_more_jobs_than_cores_are_refused():
    with pytest.raises(ExecutorError, match="would share cores"):
        open_executor(len(os.sched_getaffinity(0)) + 1, pin=True)


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    yield "dask://" + cluster.scheduler_address.removeprefix("tcp://")
    cluster.close()


@needs_namespaces
def test_a_batch_on_dask_gets_the_statuses_and_metrics_of_a_serial_run(tmp_path, dask_cluster):
    paths = write(tmp_path, "good", "raises", "hangs") + [GREEDY]
    targets = all_targets("mixtral-8x7b", "gpt-oss-120b")
    limits = Limits(timeout=3)
    serial = evaluate_programs(paths, targets, limits)
    on_dask = evaluate_programs(paths, targets, limits, executor=dask_cluster)
    assert [[r.status for r in records] for records in serial] == \
           [["ok", "ok"], ["error", "error"], ["timeout", "timeout"], ["ok", "ok"]]
    assert [[measured(r) for r in records] for records in on_dask] == \
           [[measured(r) for r in records] for records in serial]
    assert all(r.host["concurrent_jobs"] == 2 for records in on_dask for r in records)
    assert "no placement today" in on_dask[1][0].error


def test_run_on_dask_records_what_a_serial_run_does(dask_cluster, capsys):
    common = ["run", "--algorithms", "fast,seed", "--datasets", "mixtral-8x7b", "--quiet", "--json"]
    assert main(common) == 0
    serial = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(common + ["--executor", dask_cluster]) == 0
    on_dask = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, serial))) == sorted(map(json.dumps, map(strip, on_dask)))


@needs_namespaces
def test_evaluate_takes_a_folder_of_programs_and_ranks_them(tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    write(folder, "good", "raises")
    code = main(["evaluate", str(folder), "--datasets", "mixtral-8x7b", "--quiet", "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 0
    ranking = out[out.index("programs by combined score"):].splitlines()
    assert "good.py" in ranking[1] and "1/1 scored" in ranking[1]
    assert "raises.py" in ranking[2] and "0.0000" in ranking[2] and "0/1 scored" in ranking[2]


def test_evaluate_refuses_one_program_name_twice(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "same.py").write_text(PROGRAMS["good"])
    code = main(["evaluate", str(tmp_path / "a"), str(tmp_path / "b" / "same.py"), "--quiet"])
    assert code == 2 and "same.py is given twice" in capsys.readouterr().err


# -- the Python entry point --------------------------------------------------------------
@needs_namespaces
def test_the_entry_point_gives_a_combined_score_that_failing_cannot_raise(tmp_path):
    good, raises = write(tmp_path, "good", "raises")
    result = eplb_bench.evaluate_program(good, scorer="balance", datasets=["mixtral-8x7b", "gpt-oss-120b"])
    assert result["statuses"] == {"ok": 2} and result["scored"] == 2 and result["errors"] == {}
    scores = [row["score"] for row in result["per_scenario"]]
    assert result["combined_score"] == pytest.approx(sum(scores) / 2)
    # Under the balance scorer the score is the next-window GPU balancedness.
    assert result["combined_score"] == pytest.approx(result["metrics"]["balancedness_gpu"])
    failing = eplb_bench.evaluate_program(raises, scorer="balance", datasets=["mixtral-8x7b"])
    assert failing["combined_score"] == 0.0 and failing["statuses"] == {"error": 1}
    assert "no placement today" in failing["errors"]["mixtral-8x7b EP8"]


@pytest.mark.parametrize("keywords, message", [
    ({"scorer": "best"}, "unknown scorer"),
    ({"split": "private"}, "unknown split"),
    ({"datasets": ["no-such-dataset"]}, "no-such-dataset"),
    ({"split": "heldout", "datasets": ["deepseek-v3-sglang"]}, "synthetic suite datasets"),
])
def test_the_entry_point_refuses_bad_settings(keywords, message):
    with pytest.raises(ValueError, match=message):
        eplb_bench.evaluate_program(GREEDY, **keywords)


def test_the_entry_point_refuses_a_path_that_is_no_program(tmp_path):
    with pytest.raises(ValueError, match="no program file"):
        eplb_bench.evaluate_program(tmp_path / "missing.py")


# -- OpenEvolve loads our evaluator file --------------------------------------------------
@pytest.fixture
def openevolve_evaluator(monkeypatch):
    pytest.importorskip("openevolve")
    from eplb_bench.evaluation import openevolve_evaluator

    # OpenEvolve puts the evaluator's folder on sys.path and its module in sys.modules.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "evaluation_module", raising=False)
    monkeypatch.setenv("EPLB_BENCH_EVAL_DATASETS", "mixtral-8x7b,gpt-oss-120b")
    monkeypatch.setenv("EPLB_BENCH_EVAL_SCORER", "balance")
    return openevolve_evaluator.__file__


def openevolve_metrics(evaluator_file: str, program: str, cascade: bool, thresholds=(0.5,)):
    from openevolve.config import EvaluatorConfig
    from openevolve.evaluator import Evaluator

    config = EvaluatorConfig(cascade_evaluation=cascade, cascade_thresholds=list(thresholds), timeout=120,
                             max_retries=0)
    evaluator = Evaluator(config, evaluator_file)
    metrics = asyncio.run(evaluator.evaluate_program(program, "program-1"))
    return metrics, evaluator.get_pending_artifacts("program-1")


@needs_namespaces
def test_openevolve_loads_our_evaluator_and_gets_the_metrics(openevolve_evaluator, tmp_path):
    metrics, artifacts = openevolve_metrics(openevolve_evaluator, PROGRAMS["good"], cascade=False)
    [good] = write(tmp_path, "good")
    direct = eplb_bench.evaluate_program(good, scorer="balance", datasets=["mixtral-8x7b", "gpt-oss-120b"])
    assert metrics["combined_score"] == pytest.approx(direct["combined_score"])
    assert metrics["scored_share"] == 1.0 and 0 < metrics["balancedness_gpu"] <= 1
    assert "2 of 2 scenarios scored" in artifacts["summary"] and artifacts["errors"] == "none"
    assert len(json.loads(artifacts["per_scenario"])) == 2


@needs_namespaces
def test_openevolve_cascade_stops_a_broken_program_at_the_first_stage(openevolve_evaluator, monkeypatch):
    metrics, artifacts = openevolve_metrics(openevolve_evaluator, PROGRAMS["raises"], cascade=True)
    assert metrics["combined_score"] == 0.0 and metrics["scored_share"] == 0.0
    assert "stage2_passed" not in metrics and "no placement today" in artifacts["errors"]
    # A good program passes stage 1 (mixtral alone) and is scored on everything at stage 2.
    metrics, artifacts = openevolve_metrics(openevolve_evaluator, PROGRAMS["good"], cascade=True)
    assert "2 of 2 scenarios scored" in artifacts["summary"]



# -- a child that answers ahead of its request ---------------------------------------------
EARLY_REPLY = HONEST_TAIL + '''import __main__
sent = __main__.write_message
def write_twice(stream, header, arrays=()):
    sent(stream, header, arrays)
    if header.get("status") == "ok" and arrays:
        sent(stream, header, arrays)   # the next call's answer, before its request
__main__.write_message = write_twice
''' + SIGNATURE + "    return honest(weight, num_replicas)\n"


@needs_namespaces
def test_a_reply_written_before_its_request_is_invalid(tmp_path):
    path = tmp_path / "early.py"
    path.write_text(EARLY_REPLY)
    [records] = evaluate_programs([path], all_targets("mixtral-8x7b"), Limits(timeout=20))
    assert records[0].status == "invalid" and "wrote before it was asked" in records[0].error
