"""The command line: the main job's records, the table, and every error path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eplb_bench.cli import main

RECORD_FIELDS = {
    "algorithm", "dataset", "num_replicas", "num_groups", "num_nodes", "num_gpus", "device", "status",
    "error", "balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
    "runtime_ms", "scores",
}


@pytest.fixture(scope="module")
def main_job_records():
    result = subprocess.run([sys.executable, "-m", "eplb_bench.cli", "run", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_main_job_reports_the_seed_family_ok(main_job_records):
    seen = {(r["algorithm"], r["num_replicas"]) for r in main_job_records}
    for name in ["deepseek", "refined_packing", "hybrid_replication", "seed"]:
        for replicas in (288, 80, 96):
            assert (name, replicas) in seen
    for record in main_job_records:
        assert RECORD_FIELDS <= set(record)
        assert record["status"] == "ok", record["error"]
        assert record["dataset"] == "mini-v2-lite" and record["device"] == "cpu"
        assert 0 < record["balancedness_gpu"] <= 1 and 0 < record["balancedness_slot"] <= 1
        assert record["balancedness_gpu"] <= record["balancedness_gpu_insample"] + 0.05
        assert set(record["scores"]) == {"adrs", "skydiscover", "adrs_leaderboard"}


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
    assert "small  R=24 groups=4 nodes=2 gpus=8 (hierarchical)  device=cpu  ranked by adrs_leaderboard" in table
    assert "deepseek" in table and "seed" in table
    assert main(args) == 0  # appends
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {r["algorithm"] for r in records} == {"deepseek", "seed"}


def test_program_file_as_algorithm(small_npz, tmp_path, capsys):
    program = tmp_path / "mine.py"
    program.write_text("from algorithms.deepseek import rebalance_experts as _d\n"
                       "def rebalance_experts(w, r, g, n, p):\n    return _d(w, r, g, n, p)\n")
    assert main(["run", "--json", "--algorithms", str(program), "--datasets", str(small_npz),
                 "--replicas", "24", "--gpus", "8"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["algorithm"] == "mine" and record["status"] == "ok" and record["num_groups"] == 1


def test_list(capsys):
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"deepseek", "refined_packing", "hybrid_replication", "seed"} <= set(names)


def bad_files(tmp_path):
    (tmp_path / "broken.json").write_text("{oops")
    np.savez(tmp_path / "nan.npz", windows=np.full((3, 2, 8), np.nan))
    np.savez(tmp_path / "neg.npz", windows=-np.ones((3, 2, 8)))
    np.savez(tmp_path / "flat.npz", windows=np.ones((3, 8)))
    return tmp_path


ERROR_CASES = [
    (["run", "--algorithms", "nope"], 1, "unknown balancer 'nope'"),
    (["run", "--datasets", "nope"], 1, "no dataset named 'nope'"),
    (["run", "--datasets", "{dir}/absent.npz"], 1, "no such file"),
    (["run", "--datasets", "{dir}/broken.json"], 1, "not valid JSON"),
    (["run", "--datasets", "{dir}/nan.npz"], 1, "NaN or infinite"),
    (["run", "--datasets", "{dir}/neg.npz"], 1, "negative values"),
    (["run", "--datasets", "{dir}/flat.npz"], 1, "expected [windows, layers, experts]"),
    (["run", "--replicas", "100", "--gpus", "32"], 2, "not divisible by num_gpus=32"),
    (["run", "--replicas", "288", "--groups", "7", "--gpus", "32"], 2, "not divisible into num_groups=7"),
    (["run", "--replicas", "288"], 2, "--replicas and --gpus must be given together"),
    (["run", "--replicas", "abc"], 2, "invalid int value: 'abc'"),
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
