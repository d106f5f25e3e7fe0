"""`eplb-bench evaluate`: contributed programs in an isolated sandbox, good and hostile;
`run --out/--resume` keeping what a killed run finished.

Tests that need Linux namespaces skip, saying why, where bubblewrap cannot make a
sandbox; with EPLB_BENCH_REQUIRE_NAMESPACES=1 (as in CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import site
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from eplb_bench import load_dataset
from eplb_bench.cli import main
from eplb_bench.data.catalog import datasets_dir
from eplb_bench.evaluation.evaluate import evaluate_heldout, evaluate_program, summary
from eplb_bench.evaluation.isolation import namespaces_unavailable
from eplb_bench.core.registry import file_algorithm_info
from eplb_bench.evaluation.runner import Job, run_job
from eplb_bench.core.scoring import all_scores
from eplb_bench.data.suite import heldout_dataset, heldout_datasets

from hostile_programs import HONEST_TAIL, PROGRAMS, honest_planner, memorizer

PROGRAMS_FOLDER = Path(__file__).with_name("programs")
GREEDY = PROGRAMS_FOLDER / "greedy.py"
SIGNATURE = "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
ROUND_ROBIN = HONEST_TAIL + SIGNATURE + "    return honest(weight, num_replicas)\n"
BAD = {
    "hangs": "import time\n" + SIGNATURE + "    while True:\n        time.sleep(1)\n",
    "raises": SIGNATURE + "    raise ValueError('no placement today')\n",
    "duplicates": HONEST_TAIL + SIGNATURE + "    phy2log, log2phy, logcnt = honest(weight, num_replicas)\n"
                  "    log2phy[:, 1, 0] = log2phy[:, 0, 0]   # two experts claim one slot\n"
                  "    return phy2log, log2phy, logcnt\n",
    "hog": "import torch\n" + SIGNATURE + "    kept = []\n    while True:\n"
           "        kept.append(torch.ones(64 * 2**20, dtype=torch.uint8))\n",
    "crashes": "import os\n" + SIGNATURE + "    print('about to vanish')\n    os._exit(3)\n",
}


def _namespaces():
    reason = namespaces_unavailable()
    if reason and os.environ.get("EPLB_BENCH_REQUIRE_NAMESPACES") == "1":
        pytest.fail(f"EPLB_BENCH_REQUIRE_NAMESPACES=1 but {reason}")
    return pytest.mark.skipif(bool(reason), reason=f"no isolation by namespaces here: {reason}")


needs_namespaces = _namespaces()


@pytest.fixture
def program(tmp_path):
    def write(name: str, text: str):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        return path
    return write


@pytest.fixture
def marker():
    """A token that every process a hostile program starts carries in its command line."""
    token = f"eplb{uuid.uuid4().hex[:12]}"
    yield token
    deadline = time.monotonic() + 5   # the kernel tears a pid namespace down just after its first process
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with(token), "a process outlived the evaluation"


def processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def targets(*names):
    return [(dataset, dataset.scenarios[0]) for dataset in map(load_dataset, names)]


def evaluate(path, *names, **options):
    return list(evaluate_program(path, targets(*names), **options))


def hostile(program, name, **fields):
    defaults = {"datasets": str(datasets_dir()), "checkout": str(Path(__file__).parents[1]), "parent": os.getpid(),
                "site_packages": site.getsitepackages()[0], "outside": "/nonexistent", "marker": "none",
                "port": 9, "bystander": 0}
    return program(name, PROGRAMS[name].format(**{**defaults, **fields}))


def peak_rss_growth(action) -> tuple[object, int]:
    """(result of action(), growth of this process's peak resident memory in bytes)."""
    Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS

    def peak():
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
        return int(line.split()[1]) * 1024

    before = peak()
    result = action()
    return result, peak() - before


# -- bad programs: each ends with its own status in bounded time --------------------
@needs_namespaces
@pytest.mark.parametrize("name, status, reason", [
    ("hangs", "timeout", "took longer than 3 s; the process was killed"),
    ("raises", "error", "ValueError: no placement today"),
    ("duplicates", "invalid", "slot"),
    ("hog", "memory", "allocate"),
    ("crashes", "crash", "the process died: exit status 3; last output: about to vanish"),
])
def test_each_bad_program_ends_with_its_own_status_in_bounded_time(program, name, status, reason):
    started = time.monotonic()
    [record] = evaluate(program(name, BAD[name]), "mixtral-8x7b", timeout=3, memory_mb=512)
    assert time.monotonic() - started < 60
    assert record["status"] == status and reason in record["error"], record["error"]
    assert "\n" not in record["error"] and record["isolation"] == "namespaces"


# -- escapes ------------------------------------------------------------------------
@needs_namespaces
def test_with_its_audit_hook_off_a_program_still_reaches_no_data_and_scores_honestly(program):
    [record] = evaluate(hostile(program, "reads_data"), "mixtral-8x7b", timeout=20)
    [honest] = evaluate(program("honest", ROUND_ROBIN), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok", record["error"]
    assert record["balancedness_gpu"] == honest["balancedness_gpu"]


def test_the_audit_hook_alone_is_no_defence(program):
    """--isolation process: the same program switches the hook off and reads the data,
    which is why such results are marked as not isolated."""
    [record] = evaluate(hostile(program, "reads_data"), "mixtral-8x7b", timeout=20, isolation="process")
    assert record["status"] == "error" and "CHEATED" in record["error"] and record["isolation"] == "process"


@needs_namespaces
def test_nothing_is_written_outside_the_working_folder(program, tmp_path, marker):
    outside = tmp_path / "escaped.txt"
    planted = Path(site.getsitepackages()[0]) / f"planted_{marker}.pth"
    [record] = evaluate(hostile(program, "plants_files", outside=str(outside), marker=marker), "mixtral-8x7b",
                        timeout=20)
    assert record["status"] == "ok", record["error"]
    assert not outside.exists() and not planted.exists() and not Path(f"/tmp/planted_{marker}").exists()


@needs_namespaces
def test_no_process_outlives_the_sandbox(program, marker):
    started = time.monotonic()
    [record] = evaluate(hostile(program, "leaves_processes", marker=marker), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok", record["error"]
    assert time.monotonic() - started < 60
    # The marker fixture checks that none of the sleepers survived.


@needs_namespaces
def test_when_evaluate_is_killed_its_sandbox_dies_with_it(program, marker):
    text = PROGRAMS["leaves_processes"].format(datasets="/none", marker=marker)
    path = program("sleeper", text.replace("    return honest(weight, num_replicas)", "    time.sleep(600)"))
    evaluate_command = subprocess.Popen(["eplb-bench", "evaluate", str(path), "--datasets", "mixtral-8x7b"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(marker), "the program never started its sleepers"
    finally:
        evaluate_command.kill()
        evaluate_command.wait()
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    # The marker fixture checks that nothing is left.


@needs_namespaces
def test_a_fork_bomb_stops_at_the_process_cap(program, marker):
    started = time.monotonic()
    [record] = evaluate(hostile(program, "fork_bomb", marker=marker), "mixtral-8x7b", timeout=20)
    assert record["status"] == "error" and "BlockingIOError" in record["error"], record["error"]
    assert record["isolated"]["caps"]["processes"] in ("pids cgroup", "RLIMIT_NPROC")
    assert time.monotonic() - started < 60


@needs_namespaces
def test_signals_reach_neither_the_parent_nor_other_processes(program):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        [record] = evaluate(hostile(program, "signals_parent", bystander=bystander.pid), "mixtral-8x7b", timeout=20)
        assert record["status"] == "ok", record["error"]
        assert bystander.poll() is None
        with open(f"/proc/{os.getpid()}/stat") as stat:
            assert stat.read().split(")")[1].split()[0] != "T"   # this process is not stopped
    finally:
        bystander.kill()
        bystander.wait()


@needs_namespaces
def test_no_datagram_leaves_the_sandbox(program, marker):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.5)
    try:
        [record] = evaluate(hostile(program, "network", port=listener.getsockname()[1], marker=marker),
                            "mixtral-8x7b", timeout=20)
        assert record["status"] == "ok", record["error"]
        with pytest.raises(socket.timeout):
            listener.recvfrom(64)
    finally:
        listener.close()


@needs_namespaces
def test_a_program_that_imports_the_harness_is_told_to_stand_alone(program):
    [record] = evaluate(hostile(program, "imports_harness"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "error" and "must stand alone" in record["error"], record["error"]


@needs_namespaces
def test_memory_held_outside_the_address_space_meets_the_memory_cap(program):
    started = time.monotonic()
    [record] = evaluate(hostile(program, "hoards_memory"), "mixtral-8x7b", timeout=30, memory_mb=256)
    if record["isolated"]["caps"]["memory"].startswith("memory cgroup"):
        assert record["status"] == "memory" and "memory cap" in record["error"], record["error"]
    else:
        pytest.skip("no memory cgroup could be made here")
    assert time.monotonic() - started < 60


# -- timing the program cannot forge ------------------------------------------------
def charged_at_least(record: dict, seconds: float) -> bool:
    """Whether a program that spends `seconds` inside each call was charged for it.

    Each call is charged its round trip less a transfer baseline taken before the program
    was loaded, so the bound is `seconds` less the largest calibration point: a noisy
    calibration may take a few ms off, a forged clock or hidden work could take far more.
    """
    largest_baseline_ms = max(ms for points in record["isolated"]["calibration_ms"].values() for _, ms in points)
    return record["isolated"]["roundtrip_ms"] >= seconds * 1e3 and \
        record["runtime_ms"] >= seconds * 1e3 - largest_baseline_ms


@needs_namespaces
def test_work_done_while_the_request_is_still_being_written_is_timed(program):
    """The program takes the protocol over, shrinks the request pipe and sleeps 0.3 s
    on each weight before it has read the previous placement that follows it."""
    [record] = evaluate(hostile(program, "reads_ahead"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok", record["error"]
    assert record["prev_placement"] == "passed" and charged_at_least(record, 0.3)

@needs_namespaces
def test_a_forged_clock_does_not_shorten_the_runtime(program):
    [record] = evaluate(hostile(program, "forges_clock"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok", record["error"]
    assert charged_at_least(record, 0.3) and record["isolated"]["child_clock_ms"] is None


@needs_namespaces
def test_work_hidden_in_lazy_outputs_is_timed(program):
    [record] = evaluate(hostile(program, "lazy_output"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok", record["error"]
    assert charged_at_least(record, 0.3)   # three arrays, 0.1 s each


@needs_namespaces
def test_the_runtime_is_the_parents_round_trip_less_a_calibrated_baseline(program):
    [record] = evaluate(program("round_robin", ROUND_ROBIN), "mixtral-8x7b", timeout=20)
    timing = record["isolated"]
    assert record["status"] == "ok"
    # The program takes microseconds, so the round trip is about the baseline.
    assert 0 < timing["transfer_baseline_ms"] < 50 and 0 < timing["roundtrip_ms"] < 50
    assert 0.01 <= record["runtime_ms"] <= timing["roundtrip_ms"]   # never under the 10 us resolution
    assert set(timing["calibration_ms"]) == {"plain", "with_previous"}
    for points in timing["calibration_ms"].values():
        sizes = [size for size, _ in points]
        # phy2log [32, 16], log2phy [32, 8, width] and logcnt [32, 8] int64; widths 2, 4 and 9
        # (the doubling 8 is within 25% of the widest, 9).
        assert sizes == [8 * (32 * 16 + 32 * 8 * width + 32 * 8) for width in (2, 4, 9)]


# -- a parent that cannot be hung or flooded ----------------------------------------
@needs_namespaces
@pytest.mark.parametrize("name, dataset, status, reason", [
    # The sandbox's own first process holds the pipe too, so no end-of-file comes: the deadline ends it.
    ("closes_reply_pipe", "mixtral-8x7b", "timeout", "the call took longer than 3 s"),
    ("stops_reading", "deepseek-v3", "timeout", "took no request"),
    ("forges_status", "mixtral-8x7b", "invalid", "no known status"),
    ("call_says_ready", "mixtral-8x7b", "invalid", "no known status"),
    ("forges_ready", "mixtral-8x7b", "invalid", "no known status"),
    ("deep_header", "mixtral-8x7b", "invalid", "not the protocol"),
])
def test_a_child_that_leaves_the_protocol_ends_in_bounded_time(program, name, dataset, status, reason):
    started = time.monotonic()
    [record] = evaluate(hostile(program, name), dataset, timeout=3)
    assert record["status"] == status and reason in record["error"], record["error"]
    assert time.monotonic() - started < 60


@needs_namespaces
def test_a_broken_start_costs_its_scenario_only(program):
    records = evaluate(hostile(program, "deep_header"), "mixtral-8x7b", "gpt-oss-120b", timeout=5)
    assert [r["status"] for r in records] == ["invalid", "invalid"]
    assert all(r["error"].startswith("start: loading the program") for r in records)


@needs_namespaces
def test_reasons_and_reports_stay_plain(program):
    [record] = evaluate(hostile(program, "escapes_in_reason"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "error" and record["error"].endswith("ranked first"), record["error"]
    assert record["error"].isprintable()   # no escape, carriage return or bell reaches a terminal
    [record] = evaluate(hostile(program, "nan_report"), "mixtral-8x7b", timeout=20)
    assert record["status"] == "ok" and record["balancer_report"][0] == {"dropped": "a report with NaN or infinite numbers"}
    record.to_json()   # refuses NaN and Infinity


@needs_namespaces
def test_a_giant_reply_is_refused_before_it_is_buffered(program):
    path = hostile(program, "giant_reply")
    [record], growth = peak_rss_growth(lambda: evaluate(path, "mixtral-8x7b", timeout=30))
    assert record["status"] == "invalid" and "largest valid placement" in record["error"], record["error"]
    assert growth < 64 << 20   # the reply is 400 MiB


@needs_namespaces
def test_a_stderr_flood_keeps_only_its_tail(program):
    path = hostile(program, "floods_stderr")
    [record], growth = peak_rss_growth(lambda: evaluate(path, "mixtral-8x7b", timeout=60))
    assert record["status"] == "ok", record["error"]
    assert growth < 64 << 20   # 300 MiB per call went by


# -- parity with run ----------------------------------------------------------------
@needs_namespaces
def test_a_good_program_scores_as_it_does_in_process():
    chosen = targets("mixtral-8x7b", "gpt-oss-120b")
    isolated = list(evaluate_program(GREEDY, chosen, timeout=60))
    for record, (dataset, scenario) in zip(isolated, chosen):
        local = run_job(Job(file_algorithm_info(GREEDY), dataset, scenario))
        assert record["status"] == local["status"] == "ok"
        assert record["algorithm"] == local["algorithm"] == "greedy.py"
        assert record["prev_placement"] == "passed" and record["migrated_replicas"] is not None
        for key in ("balancedness_gpu", "balancedness_gpu_insample", "balancedness_slot", "internode_share",
                    "migrated_replicas", "optimality_gap", "balancer_report"):
            assert record[key] == local[key], key
        assert record["scores"] == all_scores(local, record["runtime_ms"] / 1e3)


@needs_namespaces
def test_statuses_of_datasets_already_scored_are_kept(program):
    # Hangs on mixtral (8 experts) only: the harness kills it and scores the next dataset.
    text = ROUND_ROBIN.replace("    return honest(", "    while weight.shape[1] == 8:\n        pass\n    return honest(")
    records = evaluate(program("picky", text), "gpt-oss-120b", "mixtral-8x7b", "qwen3-30b", timeout=3)
    assert [r["status"] for r in records] == ["ok", "timeout", "ok"]
    result = summary(records)
    assert result["scored"] == 2 and result["statuses"] == {"ok": 2, "timeout": 1}
    assert result["scores"]["adrs"] == pytest.approx((records[0]["scores"]["adrs"] + records[2]["scores"]["adrs"]) / 2)


# -- held-out draws -----------------------------------------------------------------
def test_a_heldout_draw_is_the_suite_generator_with_a_new_seed():
    first, again, other = heldout_dataset("mixtral-8x7b", 7), heldout_dataset("mixtral-8x7b", 7), \
        heldout_dataset("mixtral-8x7b", 8)
    public = load_dataset("mixtral-8x7b")
    assert first.windows.shape == (5, 32, 8) and first.windows.equal(again.windows)
    assert not first.windows.equal(other.windows)
    assert first.scenarios == public.scenarios and first.num_groups == public.num_groups
    assert first.routing == public.routing and "bounds" not in first.meta
    # Same load per step as the public data: prefill windows of 100 steps of 4096 tokens, top-2.
    assert int(first.windows[0, 0].sum()) == int(public.windows[0, 0].sum()) == 100 * 4096 * 2
    # Drawn in parallel processes, the same windows as drawn here.
    parallel = heldout_datasets([("mixtral-8x7b", 7), ("deepseek-v2-lite", 3)], workers=2)
    assert parallel[0].windows.equal(first.windows)
    assert parallel[1].windows.equal(heldout_dataset("deepseek-v2-lite", 3).windows)


@needs_namespaces
def test_a_memorized_public_suite_gains_nothing_on_heldout_draws(program):
    names = ("mixtral-8x7b", "gpt-oss-120b")
    cheat = program("memorizer", "\n".join([memorizer(load_dataset(n).windows) for n in names[:1]]))
    honest = program("honest_planner", honest_planner())
    public_cheat, public_honest = evaluate(cheat, names[0], timeout=60), evaluate(honest, names[0], timeout=60)
    assert public_cheat[0]["balancedness_gpu"] > public_honest[0]["balancedness_gpu"] + 0.05
    draws = [(names[0], 12345)]
    scenarios = lambda dataset: dataset.scenarios[:1]  # noqa: E731
    held_cheat = evaluate_heldout(cheat, draws, scenarios, timeout=60)
    held_honest = evaluate_heldout(honest, draws, scenarios, timeout=60)
    assert held_cheat[0]["split"] == held_honest[0]["split"] == "heldout"
    assert held_cheat[0]["heldout_seed"] == 12345
    assert held_cheat[0]["balancedness_gpu"] == held_honest[0]["balancedness_gpu"]


@needs_namespaces
def test_heldout_seeds_appear_only_after_the_run(program):
    seen = []
    records = evaluate_heldout(program("round_robin", ROUND_ROBIN), [("mixtral-8x7b", 99), ("gpt-oss-120b", 98)],
                               lambda dataset: dataset.scenarios, timeout=20,
                               progress=lambda record: seen.append(record.heldout_seed is not None))
    assert seen == [False, False]
    assert [r["heldout_seed"] for r in records] == [99, 98] and all(r["status"] == "ok" for r in records)


# -- the command ----------------------------------------------------------------------
@needs_namespaces
def test_evaluate_command_json_and_bad_arguments(program, capsys):
    path = program("round_robin", ROUND_ROBIN)
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["algorithm"] == "round_robin.py" and lines[0]["status"] == "ok"
    assert lines[0]["split"] == "public" and lines[0]["isolation"] == "namespaces"
    assert lines[1]["summary"]["scored"] == 1 and set(lines[1]["summary"]["scores"]) == set(lines[0]["scores"])
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b"]) == 0
    assert "overall (public split): round_robin.py: 1 of 1 scenarios scored (ok 1)" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b", "--heldout", "--json"]) == 0
    [record, result] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["split"] == "heldout" and isinstance(record["heldout_seed"], int) and record["status"] == "ok"
    assert result["summary"]["split"] == "heldout"
    for arguments in (["missing.py"], [str(path), "--timeout", "0"], [str(path.with_suffix(".txt"))],
                      [str(path), "--replicas", "16"], [str(path), "--isolation", "chroot"],
                      [str(path), "--heldout", "--datasets", "no-such-dataset"]):
        assert main(["evaluate", *arguments]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("eplb-bench: error:")


@needs_namespaces
def test_evaluate_exits_non_zero_when_nothing_was_scored(program, capsys):
    assert main(["evaluate", str(program("raises", BAD["raises"])), "--datasets", "mixtral-8x7b"]) == 1
    assert "no scenario was scored" in capsys.readouterr().err


def test_process_isolation_is_said_plainly(program, capsys):
    path = program("round_robin", ROUND_ROBIN)
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b", "--isolation", "process"]) == 0
    captured = capsys.readouterr()
    assert "NOT isolated" in captured.err and "NOT ISOLATED" in captured.out


def test_without_namespaces_evaluate_refuses_unless_told(program, capsys, monkeypatch):
    monkeypatch.setattr("eplb_bench.commands.evaluate.namespaces_unavailable", lambda: "bubblewrap (bwrap) is not installed")
    path = program("round_robin", ROUND_ROBIN)
    assert main(["evaluate", str(path), "--datasets", "mixtral-8x7b"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--isolation process" in error[0] and "bwrap" in error[0]


def test_run_resume_skips_what_a_killed_run_finished(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    arguments = ["run", "--algorithms", "fast,deepseek", "--datasets", "mixtral-8x7b", "--out", str(out)]
    assert main(arguments + ["--json"]) == 0
    first, second = out.read_text().splitlines()
    out.write_text(first + "\n" + second[: len(second) // 2])   # killed while writing the second record
    capsys.readouterr()
    assert main(arguments + ["--resume", "--json"]) == 0
    printed = capsys.readouterr()
    assert "1 record(s)" in printed.err and "1 job(s) to run" in printed.err and ":2: malformed JSON" in printed.err
    assert [json.loads(line)["algorithm"] for line in printed.out.splitlines()] == ["deepseek"]
    kept, cut, appended = out.read_text().splitlines()
    assert kept == first and cut == second[: len(second) // 2] and json.loads(appended)["algorithm"] == "deepseek"
    assert main(arguments + ["--resume"]) == 0
    assert "0 job(s) to run" in capsys.readouterr().err
    assert main(["run", "--resume", "--datasets", "mixtral-8x7b"]) == 2
