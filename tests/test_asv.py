"""The asv suite and the regression gate: comparison rules by hand, the benchmark
functions outside asv, and asv itself recording two commits that the gate compares."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eplb_bench.core.costmodel import load_profile
from eplb_bench.evaluation.replay import CostSettings

from eplb_bench.cli import main
from eplb_bench.tracking.gate import Change, allowed_value, worsened
from eplb_bench.evaluation.runner import Job, run_job
from eplb_bench import load_dataset
from eplb_bench.core.registry import algorithm_info

ROOT = Path(__file__).resolve().parents[1]
TRACK = "benchmarks.Quality.track_gpu_imbalance_next"
SHARE = "benchmarks.Quality.track_internode_share"
TIME = "benchmarks.Rebalance.time_rebalance_cpu"
MEMORY = "benchmarks.Rebalance.peakmem_rebalance_cpu"
P = ("fast", "mixtral-8x7b")


@pytest.mark.parametrize("name, base, allowed", [
    (TRACK, 1.25, 1.2625),          # 1% of the value
    (SHARE, 0.30, 0.31),            # 1% of 1: absolute below 1
    (SHARE, 0.0, 0.01),
    (TIME, 0.004, 0.006),
    (MEMORY, 1000.0, 1500.0),
    ("benchmarks.Quality.setup_cache", 1.0, None),
])
def test_allowed_value_by_kind(name, base, allowed):
    limit = allowed_value(name, base, 0.01, 1.5, 1.5)
    assert limit == pytest.approx(allowed) if allowed is not None else limit is None


def test_worsened_flags_exactly_the_values_past_their_limits():
    base = {(TRACK, P): 1.25, (TRACK, ("seed", "x")): 1.25, (SHARE, P): 0.30, (SHARE, ("seed", "x")): 0.30,
            (TIME, P): 0.004, (TIME, ("seed", "x")): 0.004, (MEMORY, P): 1000.0,
            (TRACK, ("deepseek", "x")): 1.5, (TRACK, ("failed", "x")): None, (TRACK, ("skipped", "x")): math.nan,
            (TRACK, ("only-base", "x")): 1.0}
    head = {(TRACK, P): 1.2626, (TRACK, ("seed", "x")): 1.2624, (SHARE, P): 0.3101, (SHARE, ("seed", "x")): 0.3099,
            (TIME, P): 0.0061, (TIME, ("seed", "x")): 0.0059, (MEMORY, P): 1400.0,
            (TRACK, ("deepseek", "x")): None, (TRACK, ("failed", "x")): 9.0, (TRACK, ("skipped", "x")): 9.0,
            (TRACK, ("only-head", "x")): 9.0}
    changes = worsened(base, head)
    assert {(c.benchmark, c.params) for c in changes} == {
        (TRACK, P), (SHARE, P), (TIME, P), (TRACK, ("deepseek", "x"))}
    failed = next(c for c in changes if c.head is None)
    assert failed.line() == f"{TRACK}(deepseek, x): 1.5 at BASE, failed at HEAD"
    assert worsened(base, base) == []
    assert worsened(base, head, track_threshold=0.02, time_factor=2.0) == [Change(TRACK, ("deepseek", "x"), 1.5, None, None)]


@pytest.fixture
def suite(monkeypatch):
    """The benchmarks module, imported with one small dataset and a chosen balancer list."""
    def load(balancers: str):
        monkeypatch.setenv("EPLB_BENCH_ASV_BALANCERS", balancers)
        monkeypatch.setenv("EPLB_BENCH_ASV_DATASETS", "mixtral-8x7b")
        monkeypatch.syspath_prepend(str(ROOT))
        sys.modules.pop("benchmarks.benchmarks", None)
        return importlib.import_module("benchmarks.benchmarks")
    yield load
    sys.modules.pop("benchmarks.benchmarks", None)


RAISES = "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n    raise ValueError('boom')\n"


def test_quality_tracks_are_imbalances_of_the_runner_record(suite, tmp_path):
    bad = tmp_path / "raises.py"
    bad.write_text(RAISES)
    bench = suite(f"fast,{bad}")
    assert bench.BALANCERS == ["fast", str(bad)] and bench.DATASETS == ["mixtral-8x7b"]
    quality = bench.Quality().setup_cache()
    dataset = load_dataset("mixtral-8x7b")
    record = run_job(Job(algorithm_info("fast"), dataset, dataset.scenarios[0]))
    good = quality[("fast", "mixtral-8x7b")]
    assert good["gpu_imbalance_next"] == pytest.approx(1 / record["balancedness_gpu"])
    assert good["gpu_imbalance_insample"] == pytest.approx(1 / record["balancedness_gpu_insample"])
    assert good["gpu_imbalance_insample"] >= 1 and good["slot_imbalance_next"] >= good["gpu_imbalance_next"] - 1e-9
    assert good["optimality_gap"] == pytest.approx(record["optimality_gap"])
    replayed = run_job(Job(algorithm_info("fast"), dataset, dataset.scenarios[0],
                           cost=CostSettings(load_profile("h200-nvlink-ib400"), (100,))))
    assert good["modeled_step_ratio"] == pytest.approx(1 / replayed.modeled_speedup)
    assert bench.Quality.track_gpu_imbalance_next(None, quality, "fast", "mixtral-8x7b") == good["gpu_imbalance_next"]
    assert bench.Quality.track_gpu_imbalance_next.unit == "max/mean"
    with pytest.raises(RuntimeError, match="raises.py on mixtral-8x7b: error: .*ValueError: boom"):
        bench.Quality.track_slot_imbalance_next(None, quality, str(bad), "mixtral-8x7b")
    no_bound = {("fast", "d"): dict(good, optimality_gap=None)}
    with pytest.raises(bench.SkipNotImplemented):
        bench.Quality.track_optimality_gap(None, no_bound, "fast", "d")


def test_speed_setup_rejects_an_invalid_placement(suite, tmp_path):
    bad = tmp_path / "duplicate.py"
    bad.write_text("import torch\n"
                   "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
                   "    L, E = weight.shape\n"
                   "    phy = torch.zeros(L, num_replicas, dtype=torch.int64)\n"
                   "    return phy, torch.zeros(L, E, 1, dtype=torch.int64), torch.ones(L, E, dtype=torch.int64)\n")
    bench = suite(f"fast,{bad}")
    timed = bench.Rebalance()
    timed.setup("fast", "mixtral-8x7b")
    timed.time_rebalance_cpu("fast", "mixtral-8x7b")
    with pytest.raises(RuntimeError, match="duplicate.py on mixtral-8x7b: invalid"):
        timed.setup(str(bad), "mixtral-8x7b")


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=eplb-bench tests", "-c", "user.email=tests@eplb-bench.invalid"]
    return subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


WORSE = ("import torch\n"
         "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
         "    # blind to the load: slots dealt to experts round-robin\n"
         "    layers, experts = weight.shape\n"
         "    slots = torch.arange(num_replicas)\n"
         "    phy2log = (slots % experts).repeat(layers, 1)\n"
         "    logcnt = torch.bincount(phy2log[0], minlength=experts).repeat(layers, 1)\n"
         "    log2phy = torch.full((layers, experts, int(logcnt.max())), -1)\n"
         "    log2phy[:, slots % experts, slots // experts] = slots\n"
         "    return phy2log, log2phy, logcnt\n")
GOOD = ("from eplb_bench import get_algorithm\n"
        "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
        "    return get_algorithm('fast')(weight, num_replicas, num_groups, num_nodes, num_gpus)\n")


def test_asv_records_two_commits_and_the_gate_fails_on_the_worse_one(tmp_path, capsys):
    """asv runs the suite in this environment for two commits of a scratch repository whose
    balancer file got worse; a raising balancer fails its own benchmarks only."""
    pytest.importorskip("asv")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    balancer = tmp_path / "candidate.py"
    raises = tmp_path / "raises.py"
    raises.write_text(RAISES)
    config = tmp_path / "asv.conf.json"
    config.write_text(json.dumps({
        "version": 1, "project": "eplb-bench", "repo": str(repo), "branches": ["main"],
        "environment_type": "existing", "benchmark_dir": str(ROOT / "benchmarks"),
        "env_dir": str(tmp_path / "env"), "results_dir": str(tmp_path / "results"), "html_dir": str(tmp_path / "html"),
    }))
    env = dict(os.environ, HOME=str(tmp_path), EPLB_BENCH_ASV_BALANCERS=f"{balancer},{raises}",
               EPLB_BENCH_ASV_DATASETS="mixtral-8x7b")
    asv = [sys.executable, "-m", "asv"]
    subprocess.run(asv + ["machine", "--yes", "--machine", "ci-test", "--config", str(config)], env=env, check=True,
                   capture_output=True)
    commits = []
    for text in (GOOD, WORSE):
        balancer.write_text(text)
        git(repo, "commit", "-q", "--allow-empty", "-m", "step")
        commits.append(git(repo, "rev-parse", "HEAD"))
        done = subprocess.run(asv + ["run", "--config", str(config), "--machine", "ci-test", "--python=same", "--quick",
                                     "--bench", "Quality", "--set-commit-hash", commits[-1]],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]   # the raising balancer failed
        assert "ValueError: boom" in done.stdout + done.stderr
    stored = json.loads(next((tmp_path / "results" / "ci-test").glob(f"{commits[0][:8]}-*.json")).read_text())
    tracks = {name for name in stored["results"] if ".track_" in name}
    assert tracks == {f"benchmarks.Quality.track_{key}" for key in (
        "gpu_imbalance_next", "gpu_imbalance_insample", "slot_imbalance_next", "internode_share", "optimality_gap",
        "modeled_step_ratio")}
    arguments = ["gate", "--config", str(config), "--machine", "ci-test", "--compare-only"]
    assert main(arguments + [commits[0], commits[0]]) == 0
    capsys.readouterr()
    assert main(arguments + [commits[0], commits[1]]) == 1
    printed = capsys.readouterr().out
    assert f"track_gpu_imbalance_next({balancer}, mixtral-8x7b)" in printed and "WORSE" in printed
    assert main(arguments + [commits[0], commits[1], "--track-threshold", "0.5"]) == 0


ORACLE_ONLY_FAILS = '''import torch
from eplb_bench import get_algorithm, load_dataset

LAST = load_dataset("mixtral-8x7b").windows[-1]


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    if torch.equal(weight, LAST):   # only the replay's oracle plans on the last window
        raise ValueError("not this one")
    return get_algorithm("fast")(weight, num_replicas, num_groups, num_nodes, num_gpus)
'''


def test_a_failure_in_the_replay_alone_fails_the_modeled_track_alone(suite, tmp_path):
    program = tmp_path / "oracle_fails.py"
    program.write_text(ORACLE_ONLY_FAILS)
    bench = suite(str(program))
    quality = bench.Quality().setup_cache()
    assert quality[(str(program), "mixtral-8x7b")]["gpu_imbalance_next"] >= 1
    assert bench.Quality.track_gpu_imbalance_next(None, quality, str(program), "mixtral-8x7b") >= 1
    with pytest.raises(RuntimeError, match="replay: oracle on window 11: ValueError: not this one"):
        bench.Quality.track_modeled_step_ratio(None, quality, str(program), "mixtral-8x7b")
