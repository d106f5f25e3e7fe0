"""`eplb-bench evaluate`: contributed programs in a confined process, good and bad;
`run --out/--resume` keeping what a killed run finished."""

from __future__ import annotations

import json
import time

import pytest

from eplb_bench import load_dataset
from eplb_bench.cli import main
from eplb_bench.datasets import datasets_dir
from eplb_bench.evaluate import evaluate_program, summary
from eplb_bench.registry import file_algorithm_info
from eplb_bench.runner import Job, run_job
from eplb_bench.scoring import all_scores

SIGNATURE = "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
ROUND_ROBIN = (
    "import torch\n" + SIGNATURE +
    "    layers, experts = weight.shape\n"
    "    order = weight.sum(0).argsort(descending=True)\n"          # heaviest experts get the spare slots
    "    slots = torch.arange(num_replicas)\n"
    "    phy2log = order[slots % experts].repeat(layers, 1)\n"
    "    logcnt = torch.bincount(phy2log[0], minlength=experts).repeat(layers, 1)\n"
    "    log2phy = torch.full((layers, experts, int(logcnt.max())), -1)\n"
    "    log2phy[:, order[slots % experts], slots // experts] = slots\n"
    "    return phy2log, log2phy, logcnt\n"
)
PROGRAMS = {
    "hangs": "import time\n" + SIGNATURE + "    while True:\n        time.sleep(1)\n",
    "raises": SIGNATURE + "    raise ValueError('no placement today')\n",
    "duplicates": ROUND_ROBIN.replace("    return phy2log, log2phy, logcnt\n",
                                      "    log2phy[:, 1, 0] = log2phy[:, 0, 0]   # two experts claim one slot\n"
                                      "    return phy2log, log2phy, logcnt\n"),
    "hog": "import torch\n" + SIGNATURE + "    kept = []\n    while True:\n"
           "        kept.append(torch.ones(64 * 2**20, dtype=torch.uint8))\n",
    "crashes": "import os\n" + SIGNATURE + "    print('about to vanish')\n    os._exit(3)\n",
}


def cheat_program(data_folder: str) -> str:
    """Looks for the next window on the call stack, then in the dataset files and the
    harness's memory, and tries to plant code for later processes; raises with what it
    found or why it could not."""
    return (
        "import ctypes, glob, inspect, os\nimport numpy as np\nimport torch\n" + SIGNATURE +
        "    for frame in inspect.stack():\n"
        "        for value in list(frame.frame.f_locals.values()):\n"
        "            if isinstance(value, (torch.Tensor, np.ndarray)) and tuple(value.shape) == tuple(weight.shape) \\\n"
        "                    and not np.array_equal(np.asarray(value), weight.numpy()):\n"
        "                raise RuntimeError('CHEATED: another window on the call stack')\n"
        "    attempts = []\n"
        f"    for attempt in (lambda: glob.glob({data_folder!r} + '/*.npz'),\n"
        f"                    lambda: open({data_folder!r} + '/mixtral-8x7b.json').read(),\n"
        "                    lambda: open(f'/proc/{os.getppid()}/environ', 'rb').read(),\n"
        "                    lambda: os.listdir('/work'),\n"
        "                    lambda: __import__('ctypes').CDLL(None),\n"
        "                    lambda: open(__import__('site').getsitepackages()[0] + '/planted.pth', 'w')):\n"
        "        try:\n"
        "            found = attempt()\n"
        "        except PermissionError as exc:\n"
        "            attempts.append('refused' if 'eplb-bench sandbox' in str(exc) else str(exc)[:60])\n"
        "        else:\n"
        "            raise RuntimeError(f'CHEATED: {str(found)[:80]}')\n"
        "    raise RuntimeError(','.join(attempts))\n"
    )


@pytest.fixture
def program(tmp_path):
    def write(name: str, text: str):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        return path
    return write


def targets(*names):
    return [(dataset, dataset.scenarios[0]) for dataset in map(load_dataset, names)]


@pytest.mark.parametrize("name, status, reason", [
    ("hangs", "timeout", "took longer than 3 s; the process was killed"),
    ("raises", "error", "ValueError: no placement today"),
    ("duplicates", "invalid", "slot"),
    ("hog", "memory", "allocate"),
    ("crashes", "crash", "the process died: exit status 3; last output: about to vanish"),
])
def test_each_bad_program_ends_with_its_own_status_in_bounded_time(program, name, status, reason):
    started = time.monotonic()
    [record] = evaluate_program(program(name, PROGRAMS[name]), targets("mixtral-8x7b"), timeout=3, memory_mb=512)
    assert time.monotonic() - started < 60
    assert record["status"] == status and reason in record["error"], record["error"]
    assert "\n" not in record["error"]


def test_a_cheating_program_finds_neither_the_next_window_nor_the_data(program):
    path = program("cheats", cheat_program(str(datasets_dir())))
    [record] = evaluate_program(path, targets("mixtral-8x7b"), timeout=10)
    assert record["status"] == "error"
    assert "CHEATED" not in record["error"]
    assert record["error"].endswith("RuntimeError: " + ",".join(["refused"] * 6)), record["error"]
    # The same program in the harness's own process reaches the data: the confinement is what stops it.
    in_process = run_job(Job(file_algorithm_info(path), load_dataset("mixtral-8x7b"),
                             load_dataset("mixtral-8x7b").scenarios[0]))
    assert "CHEATED" in in_process["error"]


def test_a_good_program_scores_as_it_does_in_process(program):
    path = program("round_robin", ROUND_ROBIN)
    chosen = targets("mixtral-8x7b", "gpt-oss-120b")
    isolated = list(evaluate_program(path, chosen, timeout=30))
    for record, (dataset, scenario) in zip(isolated, chosen):
        local = run_job(Job(file_algorithm_info(path), dataset, scenario))
        assert record["status"] == local["status"] == "ok"
        for key in ("balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
                    "migrated_replicas", "optimality_gap"):
            assert record[key] == local[key], key
        assert record["scores"] == all_scores(local, record["runtime_ms"] / 1e3)
        assert 0 < record["runtime_ms"] < record["isolated"]["roundtrip_ms"] < 1000


def test_statuses_of_datasets_already_scored_are_kept(program):
    # Hangs on mixtral (8 experts) only: the harness kills it and scores the next dataset.
    text = ROUND_ROBIN.replace("    layers, experts = weight.shape\n",
                               "    layers, experts = weight.shape\n    while experts == 8:\n        pass\n")
    records = list(evaluate_program(program("picky", text), targets("gpt-oss-120b", "mixtral-8x7b", "qwen3-30b"),
                                    timeout=3))
    assert [r["status"] for r in records] == ["ok", "timeout", "ok"]
    result = summary(records)
    assert result["scored"] == 2 and result["statuses"] == {"ok": 2, "timeout": 1}
    assert result["scores"]["adrs"] == pytest.approx((records[0]["scores"]["adrs"] + records[2]["scores"]["adrs"]) / 2)


def test_evaluate_command_json_and_bad_arguments(program, capsys):
    path = program("round_robin", ROUND_ROBIN)
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["algorithm"] == "round_robin" and lines[0]["status"] == "ok"
    assert lines[1]["summary"]["scored"] == 1 and set(lines[1]["summary"]["scores"]) == set(lines[0]["scores"])
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b"]) == 0
    assert "overall: round_robin: 1 of 1 scenarios scored (ok 1)" in capsys.readouterr().out
    for arguments in (["missing.py"], [str(path), "--timeout", "0"], [str(path.with_suffix(".txt"))],
                      [str(path), "--replicas", "16"]):
        assert main(["evaluate", *arguments]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("eplb-bench: error:")


def test_run_resume_skips_what_a_killed_run_finished(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    arguments = ["run", "--algorithms", "fast,deepseek", "--datasets", "mixtral-8x7b", "--out", str(out)]
    assert main(arguments + ["--json"]) == 0
    first, second = out.read_text().splitlines()
    out.write_text(first + "\n" + second[: len(second) // 2])   # killed while writing the second record
    capsys.readouterr()
    assert main(arguments + ["--resume", "--json"]) == 0
    printed = capsys.readouterr()
    assert "1 record(s)" in printed.err and "1 job(s) to run" in printed.err and "not a complete record" in printed.err
    assert [json.loads(line)["algorithm"] for line in printed.out.splitlines()] == ["deepseek"]
    kept, cut, appended = out.read_text().splitlines()
    assert kept == first and cut == second[: len(second) // 2] and json.loads(appended)["algorithm"] == "deepseek"
    assert main(arguments + ["--resume"]) == 0
    assert "0 job(s) to run" in capsys.readouterr().err
    assert main(["run", "--resume", "--datasets", "mixtral-8x7b"]) == 2

