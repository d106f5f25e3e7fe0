"""The command line: the main job's records, the table, and every error path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eplb_bench import Scenario, list_algorithms, load_dataset
from eplb_bench.cli import main
from eplb_bench.data.catalog import shipped_names

RECORD_FIELDS = {
    "algorithm", "dataset", "num_replicas", "num_groups", "num_nodes", "num_gpus", "device", "status",
    "error", "balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
    "runtime_ms", "scores", "predictor", "scenario",
}


@pytest.fixture(scope="module")
def main_job_records():
    result = subprocess.run([sys.executable, "-m", "eplb_bench.cli", "run", "--json"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_main_job_runs_every_balancer_on_every_suite_scenario(main_job_records):
    seen = {(r["algorithm"], r["dataset"], r["num_replicas"], r["num_gpus"]) for r in main_job_records}
    expected_scenarios = {(d, s.num_replicas, s.num_gpus) for d in shipped_names() for s in load_dataset(d).scenarios}
    assert len(expected_scenarios) >= 9
    for name in list_algorithms(include_slow=False):
        for dataset, replicas, gpus in expected_scenarios:
            assert (name, dataset, replicas, gpus) in seen
    for record in main_job_records:
        assert RECORD_FIELDS <= set(record)
        assert record["status"] == "ok", record["error"]
        assert record["device"] == "cpu" and record["predictor"] == "last"
        assert 0 < record["balancedness_gpu"] <= 1 and 0 < record["balancedness_slot"] <= 1
        assert record["balancedness_gpu"] <= record["balancedness_gpu_insample"] + 0.05
        assert record["runtime_ms_min"] <= record["runtime_ms"] <= record["runtime_ms_max"]
        assert set(record["scores"]) == {"adrs", "skydiscover", "adrs_leaderboard", "balance"}


@pytest.fixture
def small_npz(tmp_path):
    windows = np.random.default_rng(3).integers(0, 100, size=(3, 2, 16))
    path = tmp_path / "small.npz"
    np.savez(path, windows=windows)
    return path


def test_table_and_out_file(small_npz, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    args = ["run", "--algorithms", "deepseek,seed", "--datasets", str(small_npz),
            "--replicas", "24", "--groups", "4", "--nodes", "2", "--gpus", "8", "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "small: R=24 groups=4 nodes=2 gpus=8 (hierarchical) device=cpu predictor=last on cpu: " in table
    assert "Standings on cpu: " in table and "Balance standings on cpu: " in table
    assert "deepseek" in table and "seed" in table
    assert main(args) == 0  # appends
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {r["algorithm"] for r in records} == {"deepseek", "seed"}


def test_program_file_as_algorithm(small_npz, tmp_path, capsys):
    program = tmp_path / "mine.py"
    program.write_text("from eplb_bench_algorithms.deepseek import rebalance_experts as _d\n"
                       "def rebalance_experts(w, r, g, n, p):\n    return _d(w, r, g, n, p)\n")
    assert main(["run", "--json", "--algorithms", str(program), "--datasets", str(small_npz),
                 "--replicas", "24", "--gpus", "8"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["algorithm"] == "mine.py" and record["status"] == "ok" and record["num_groups"] == 8


def test_list(capsys):
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"deepseek", "refined_packing", "hybrid_replication", "seed"} <= set(names)


def bad_files(tmp_path):
    (tmp_path / "broken.json").write_text("{oops")
    np.savez(tmp_path / "nan.npz", windows=np.full((3, 2, 8), np.nan))
    np.savez(tmp_path / "neg.npz", windows=-np.ones((3, 2, 8)))
    np.savez(tmp_path / "flat.npz", windows=np.ones((3, 8)))
    np.savez(tmp_path / "ok.npz", windows=np.ones((3, 2, 64)))
    return tmp_path


ERROR_CASES = [
    (["run", "--algorithms", "nope"], 1, "unknown balancer 'nope'"),
    (["run", "--datasets", "nope"], 1, "no dataset named 'nope'"),
    (["run", "--datasets", "{dir}/absent.npz"], 1, "no such file"),
    (["run", "--datasets", "{dir}/broken.json"], 1, "broken.json: not valid JSON (a key:"),
    (["run", "--datasets", "{dir}/nan.npz"], 1, "NaN or infinite"),
    (["run", "--datasets", "{dir}/neg.npz"], 1, "negative values"),
    (["run", "--datasets", "{dir}/flat.npz"], 1, "expected [windows, layers, experts]"),
    (["run", "--replicas", "100", "--gpus", "32"], 2, "not divisible by num_gpus=32"),
    (["run", "--replicas", "288", "--groups", "7", "--gpus", "32"], 2, "not divisible into num_groups=7"),
    (["run", "--replicas", "288"], 2, "--replicas and --gpus must be given together"),
    (["run", "--replicas", "abc"], 2, "invalid int value: 'abc'"),
    (["run", "--datasets", "mixtral-8x7b", "--replicas", "16", "--gpus", "8", "--nodes", "0"], 2,
     "num_nodes must be a positive integer"),
    (["run", "--datasets", "mixtral-8x7b", "--replicas", "16", "--gpus", "8", "--groups", "0"], 2,
     "num_groups must be a positive integer"),
    (["run", "--algorithms", ","], 2, "--algorithms names no balancer"),
    (["run", "--predictor", "ema:2"], 2, "--predictor: unknown predictor 'ema:2'"),
    (["run", "--window-steps", "0"], 2, "--window-steps must be at least 1"),
    (["datasets", "show", "nope"], 2, "no dataset named 'nope'"),
    (["datasets", "import", "{dir}/broken.json", "--name", "x"], 1, "broken.json: not valid JSON"),
    (["datasets", "import", "{dir}/nan.npz", "--name", "x", "--scenario", "1,2"], 2, "--scenario expects R,G,N,P"),
    (["datasets", "import", "{dir}/ok.npz", "--name", "x", "--scenario", "64,8,2,9"], 2,
     "scenario R64/G8/N2/P9: num_replicas=64 is not divisible by num_gpus=9"),
    (["run", "--repeat", "0"], 2, "--repeat must be at least 1"),
    (["run", "--device", "tpu"], 2, "--device must be cpu or cuda[:N]"),
    (["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, status, message", ERROR_CASES, ids=[" ".join(c[0]) for c in ERROR_CASES])
def test_errors_are_one_line(tmp_path, capsys, argv, status, message):
    folder = bad_files(tmp_path)
    argv = [arg.replace("{dir}", str(folder)) for arg in argv]
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eplb-bench: error: ") and message in lines[0], captured.err


def test_cuda_unavailable_is_a_clean_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["run", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "eplb-bench: error: --device cuda: CUDA is not available on this machine"


def test_installed_entry_point_prints_no_traceback(tmp_path):
    (tmp_path / "broken.json").write_text("{oops")
    script = Path(sys.executable).parent / "eplb-bench"
    result = subprocess.run([str(script), "run", "--datasets", str(tmp_path / "broken.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_predictor_is_recorded_and_changes_the_plan(small_npz, capsys):
    common = ["run", "--json", "--algorithms", "deepseek", "--datasets", str(small_npz), "--replicas", "24", "--gpus", "8"]
    assert main(common) == 0
    last = json.loads(capsys.readouterr().out)
    assert main(common + ["--predictor", "ema:0.5"]) == 0
    ema = json.loads(capsys.readouterr().out)
    assert last["predictor"] == "last" and ema["predictor"] == "ema:0.5"
    assert ema["balancedness_gpu_insample"] != last["balancedness_gpu_insample"]


def test_balancer_that_exits_is_recorded(small_npz, tmp_path, capsys):
    program = tmp_path / "quits.py"
    program.write_text("import sys\ndef rebalance_experts(*args):\n    sys.exit(3)\n")
    assert main(["run", "--json", "--algorithms", f"{program},deepseek", "--datasets", str(small_npz),
                 "--replicas", "24", "--gpus", "8"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records] == ["error", "ok"]
    assert records[0]["error"] == "warm-up: SystemExit: 3"


def test_datasets_commands(capsys):
    assert main(["datasets"]) == 0
    listing = capsys.readouterr().out
    assert "deepseek-v3" in listing and "58 x 256" in listing and "decode EP144: 288/8/18/144" in listing
    assert main(["datasets", "show", "qwen3-235b"]) == 0
    shown = capsys.readouterr().out
    assert "Gini" in shown and "rank correlation of consecutive windows" in shown
    assert main(["datasets", "verify"]) == 0
    assert all(line.endswith(" ok") for line in capsys.readouterr().out.splitlines())


def test_datasets_verify_fails_on_a_changed_file(tmp_path, monkeypatch, capsys):
    np.savez(tmp_path / "d.npz", windows=np.ones((3, 2, 8)))
    (tmp_path / "d.json").write_text(json.dumps({"name": "d", "file": "d.npz", "sha256": "0" * 64}))
    monkeypatch.setenv("EPLB_BENCH_DATASETS", str(tmp_path))
    assert main(["datasets", "verify"]) == 1
    assert "FAILED: sha256" in capsys.readouterr().out


def test_datasets_import_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EPLB_BENCH_DATA", str(tmp_path / "store"))
    counts = torch.randint(0, 9, (200, 2, 16))
    torch.save({"logical_count": counts}, tmp_path / "dump.pt")
    assert main(["datasets", "import", str(tmp_path / "dump.pt"), "--name", "mine", "--groups", "4",
                 "--scenario", "24,4,2,8"]) == 0
    assert "imported mine: 2 windows of 2 x 16" in capsys.readouterr().out
    assert main(["run", "--json", "--algorithms", "seed", "--datasets", "mine"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["dataset"], record["num_replicas"], record["num_groups"], record["status"]) == ("mine", 24, 4, "ok")


@pytest.mark.parametrize(
    "manifest",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"file": "d.npz", "sha256": 5}),
        json.dumps({"file": "d.npz", "sha256": "0" * 64, "num_groups": "x"}),
        json.dumps({"file": "d.npz", "sha256": "0" * 64, "phases": [{"windows": 3}]}),
    ],
)
def test_tampered_manifests_give_one_line_errors(tmp_path, monkeypatch, capsys, manifest):
    np.savez(tmp_path / "d.npz", windows=np.ones((3, 2, 8)))
    (tmp_path / "d.json").write_text(manifest)
    monkeypatch.setenv("EPLB_BENCH_DATASETS", str(tmp_path))
    for argv in (["datasets", "show", "d"], ["datasets"], ["run", "--datasets", "d"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("eplb-bench: error: ") and "d.json" in err[0], err
    assert main(["datasets", "verify"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_main_job_reports_migrations_and_the_fast_family_is_passed_its_placement(main_job_records):
    for record in main_job_records:
        if record["protocol"] == "cross-workload":   # static workloads: nothing to migrate from
            assert record["migrated_replicas"] is None and record["prev_placement"].startswith("none")
            continue
        assert record["migrated_replicas"] is not None and record["migrated_replicas"] >= 0
        expected = "passed" if record["algorithm"] in ("fast", "fast_spread") else "not accepted"
        assert record["prev_placement"] == expected and record["computed_on"] == "cpu"


def test_main_job_scores_every_pair_of_the_real_dataset(main_job_records):
    dataset = load_dataset("deepseek-v3-sglang")
    names = dataset.workload_names
    expected = {(names[plan], names[serve]) for plan, serve in dataset.scored_pairs()}
    assert len(expected) == 16
    for name in list_algorithms(include_slow=False):
        for scenario in dataset.scenarios:
            pairs = {(r["plan_workload"], r["serve_workload"]) for r in main_job_records
                     if r["algorithm"] == name and r["dataset"] == dataset.name and r["num_gpus"] == scenario.num_gpus}
            assert pairs == expected


def test_bench_speed_prints_medians_and_ratios(capsys):
    assert main(["bench-speed", "--datasets", "mixtral-8x7b", "--calls", "2"]) == 0
    out = capsys.readouterr().out
    assert "median ms of 2 calls on cpu; ratios = balancer / fast" in out
    header, _, row = out.splitlines()[1:4]
    assert header.split()[:2] == ["dataset", "scenario"] and "deepseek/fast" in header and "seed/fast" in header
    cells = row.split()
    assert cells[0] == "mixtral-8x7b" and cells[-1].endswith("x") and cells[-2].endswith("x")
    deepseek_ms, seed_ms, fast_ms = (float(c) for c in cells[-5:-2])
    # Ratios come from unrounded medians; the printed ones are rounded to 0.01 ms.
    assert float(cells[-2][:-1]) == pytest.approx(deepseek_ms / fast_ms, rel=0.05, abs=0.06)
    assert float(cells[-1][:-1]) == pytest.approx(seed_ms / fast_ms, rel=0.05, abs=0.06)
    # One row: the geometric means are that row's ratios.
    assert out.splitlines()[4].split() == ["geometric", "mean", cells[-2], cells[-1]]


def test_speed_ratios_keep_three_digits_and_average_geometrically():
    from eplb_bench.evaluation.speed import SpeedRow, format_speed

    rows = [SpeedRow("a", "s", {"fast": 2.0, "slow": 2000.0, "quick": 0.002}, {}),
            SpeedRow("b", "s", {"fast": 1.0, "slow": 10.0, "quick": None}, {"quick": "raised: no"})]
    lines = format_speed(rows, ["fast", "slow", "quick"], "fast").splitlines()
    assert lines[2].split()[-2:] == ["1000x", "0.001x"]
    assert lines[3].split()[-2:] == ["10x", "-"] and "failed" in lines[3] and "quick: raised: no" in lines[4]
    assert lines[5].split() == ["geometric", "mean", "100x", "0.001x"]    # sqrt(1000 * 10)


def test_bench_speed_rejects_a_reference_it_does_not_time(capsys):
    assert main(["bench-speed", "--algorithms", "deepseek,seed", "--datasets", "mixtral-8x7b"]) == 2
    assert "--reference 'fast' is not among --algorithms" in capsys.readouterr().err


def test_bench_speed_can_hand_over_the_previous_placement(capsys):
    assert main(["bench-speed", "--datasets", "mixtral-8x7b", "--calls", "2", "--previous",
                 "--algorithms", "seed,fast"]) == 0
    out = capsys.readouterr().out
    assert "previous placement handed over" in out and "failed" not in out


def test_program_files_do_not_claim_a_device(small_npz, tmp_path, capsys):
    from eplb_bench.core.registry import file_algorithm_info
    from eplb_bench.evaluation.runner import Job, computed_on

    program = tmp_path / "mine.py"
    program.write_text("def rebalance_experts(w, r, g, n, p):\n    raise RuntimeError\n")
    job = Job(file_algorithm_info(program), load_dataset(str(small_npz)), Scenario(24, 1, 1, 8), device="cuda")
    assert computed_on(job) == "cuda input (where it computes is not declared)"


def test_bench_speed_calls_the_balancers_in_a_fresh_order_at_every_window():
    """A call right after the same code runs warm: no balancer may always follow the same one."""
    from eplb_bench.core.registry import AlgorithmInfo, algorithm_info
    from eplb_bench.evaluation.speed import time_scenario

    fast, calls = algorithm_info("fast").function, []

    def logged(name):
        def balancer(weight, *scenario):
            calls.append(name)
            return fast(weight, *scenario)
        return AlgorithmInfo(name=name, function=balancer, description="", devices=("cpu",))

    dataset = load_dataset("mixtral-8x7b")
    row = time_scenario([logged(name) for name in "abc"], dataset, dataset.scenarios[0], "cpu", calls=11)
    assert not row.errors and all(row.median_ms[name] > 0 for name in "abc")
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(rounds) == 12 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    # Seeded: the same orders every run, and b is preceded by a, by c and by nothing.
    before_b = {r[r.index("b") - 1] if r.index("b") else None for r in rounds}
    assert before_b == {"a", "c", None}
    calls.clear()
    time_scenario([logged(name) for name in "abc"], dataset, dataset.scenarios[0], "cpu", calls=11)
    assert [calls[i:i + 3] for i in range(0, len(calls), 3)] == rounds
