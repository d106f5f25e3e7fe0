"""The record schema, the results store, identities, and the reports built on them."""

import json
import math
import shutil

import pytest
import torch

from eplb_bench import Scenario
from eplb_bench.cli import main
from eplb_bench.core import registry
from eplb_bench.core.machine import fix_threads, machine_identity
from eplb_bench.core.record import Record, RecordError
from eplb_bench.core.results import ResultsWriter, latest_by_identity, read_results
from eplb_bench.data.catalog import datasets_dir, shipped_names
from eplb_bench.reports.leaderboard import leaderboard_markdown, write_leaderboard
from eplb_bench.reports.standings import entry_labels, standings
from eplb_bench.reports.tables import Table, markdown_table, plot_text

SMALL = "mixtral-8x7b"
PROGRAM = "import torch\n{extra}\nfrom eplb_bench_algorithms.deepseek import rebalance_experts\n"


def documented(**changes) -> dict:
    """A record with only the required and a few documented fields."""
    values = {"algorithm": "a", "dataset": "d", "status": "ok", "balancedness_gpu": 0.9, "runtime_ms": 1.0,
              "scores": {"adrs_leaderboard": 81.0, "balance": 0.9}}
    values.update(changes)
    return values


# ---------------------------------------------------------------- the schema


def test_record_round_trips_and_checks_types():
    record = Record.from_dict(documented(num_replicas=16, migration=False))
    again = Record.from_json(record.to_json())
    assert again == record and again.migration is False and again.num_replicas == 16
    with pytest.raises(RecordError, match="num_replicas must be int"):
        Record.from_dict(documented(num_replicas="16"))
    with pytest.raises(RecordError, match="migration must be bool"):
        Record.from_dict(documented(migration=1))
    with pytest.raises(RecordError, match="record lacks status"):
        Record.from_dict({"algorithm": "a", "dataset": "d"})
    with pytest.raises(RecordError, match="unknown field"):
        Record.from_dict(documented(balancednes_gpu=0.9))
    with pytest.raises(RecordError, match="status must be one of"):
        Record.from_dict(documented(status="great"))


@pytest.mark.parametrize("text", ['"balancedness_gpu": NaN', '"runtime_ms": Infinity', '"runtime_ms": -1.0',
                                  '"scores": {"adrs": NaN}'])
def test_non_finite_or_negative_measurements_are_refused(text):
    line = '{"algorithm": "a", "dataset": "d", "status": "ok", ' + text + "}"
    with pytest.raises(RecordError):
        Record.from_json(line)


def test_to_json_refuses_nan_made_in_process():
    with pytest.raises(RecordError, match="balancedness_gpu is nan"):
        Record(algorithm="a", dataset="d", balancedness_gpu=math.nan).to_json()


def test_nan_never_ranks_first():
    good = Record.from_dict(documented(algorithm="good"))
    broken = Record(algorithm="broken", dataset="d", balancedness_gpu=math.nan, runtime_ms=1.0,
                    scores={"adrs_leaderboard": math.nan, "balance": math.nan})
    rows = standings([broken, good])
    assert [row["entry"] for row in rows] == ["good", "broken"]


def test_documented_fields_only_build_every_report(tmp_path):
    paths = write_leaderboard([documented(), documented(algorithm="b", status="error", error="boom")], tmp_path)
    assert "| 1 | a |" in paths["markdown"].read_text()


# ---------------------------------------------------------------- the store


def test_reader_skips_and_reports_cut_and_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    good = Record.from_dict(documented()).to_json()
    path.write_text(good + "\n" + good[:40] + "\n" + '{"algorithm": 1}\n' + good[:25])
    read = read_results([path])
    assert len(read.records) == 1
    assert [line.split(": ")[0] for line in read.skipped] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    with ResultsWriter(path) as writer:   # after a cut line, the next record starts a line of its own
        writer.append(Record.from_dict(documented(algorithm="b")))
    assert [r.algorithm for r in read_results([path]).records] == ["a", "b"]


def test_identity_separates_what_changes_a_measurement():
    base = Record.from_dict(documented(source_hash="1" * 64, data_sha256="2" * 64))
    variants = [documented(source_hash="3" * 64), documented(data_sha256="4" * 64), documented(repeat=3),
                documented(window_steps=50), documented(migration=False), documented(predictor="ema:0.5"),
                documented(commit="abc"), documented(device="cuda")]
    identities = {base.identity()} | {Record.from_dict({**base.to_dict(), **{k: v for k, v in changes.items()
                                                                          if k not in documented()}}).identity()
                                       for changes in variants}
    assert len(identities) == len(variants) + 1
    kept, collisions = latest_by_identity([base, Record.from_dict(documented(source_hash="1" * 64,
                                                                             data_sha256="2" * 64, runtime_ms=2.0))])
    assert len(kept) == 1 and kept[0].runtime_ms == 2.0 and len(collisions) == 1


# ---------------------------------------------------------------- end to end


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_killed_run_resumes_and_ranks(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code, _, _ = run_cli(capsys, "run", "--datasets", SMALL, "--algorithms", "deepseek,fast", "--out", str(out),
                         "--quiet")
    assert code == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    out.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])      # killed while writing the second
    code, _, err = run_cli(capsys, "run", "--datasets", SMALL, "--algorithms", "deepseek,fast", "--out", str(out),
                           "--resume", "--quiet", "--json")
    assert code == 0 and f"{out}:2: malformed JSON" in err and "1 record(s)" in err and "1 job(s) to run" in err
    read = read_results([out])
    assert sorted(r.algorithm for r in read.records) == ["deepseek", "fast"] and len(read.skipped) == 1
    code, stdout, _ = run_cli(capsys, "run", "--datasets", SMALL, "--algorithms", "deepseek,fast", "--out",
                              str(out), "--resume", "--quiet", "--repeat", "2", "--json")
    assert len(stdout.splitlines()) == 2      # another --repeat is another measurement
    code, stdout, err = run_cli(capsys, "leaderboard", str(out), "--out", str(tmp_path / "board"))
    assert code == 0 and "1 line(s) skipped" in stdout
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "Balance standings" in markdown and "| 1 | fast" in markdown


def test_same_named_programs_from_two_folders_are_two_entries(tmp_path, capsys):
    paths = []
    for folder, extra in (("one", "# first"), ("two", "# second")):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "program.py")
        paths[-1].write_text(PROGRAM.format(extra=extra))
    out = tmp_path / "r.jsonl"
    for path in paths:
        assert run_cli(capsys, "run", "--datasets", SMALL, "--algorithms", str(path), "--out", str(out),
                       "--quiet", "--json")[0] == 0
    code, _, err = run_cli(capsys, "leaderboard", str(out), "--out", str(tmp_path / "board"))
    assert code == 0 and "superseded" not in err
    records = read_results([out]).records
    labels = sorted(entry_labels(records).values())
    hashes = sorted(r.source_hash[:8] for r in records)
    assert labels == [f"program.py@{h}" for h in hashes] and hashes[0] != hashes[1]
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    assert all(f"program.py@{h}" in markdown for h in hashes)


def test_collisions_are_reported(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    line = Record.from_dict(documented()).to_json()
    path.write_text(line + "\n" + line + "\n")
    code, stdout, err = run_cli(capsys, "leaderboard", str(path), "--out", str(tmp_path / "b"))
    assert code == 0 and "superseded" in err and "1 superseded" in stdout


# ---------------------------------------------------------------- reports


def test_names_are_escaped_in_markdown_and_plots(tmp_path):
    name = "<b>$x^2$|y</b>"
    text = markdown_table(Table("t", ["balancer"], [[name]]))
    assert "\\$x^2\\$" in text and "\\|y" in text and "<b>" not in text
    assert plot_text(name) == r"<b>\$x^2\$|y</b>"
    paths = write_leaderboard([documented(algorithm=name), documented(algorithm="$$")], tmp_path)
    assert all(path.stat().st_size > 0 for path in paths.values())
    assert "<b>" not in leaderboard_markdown([Record.from_dict(documented(algorithm=name))], "adrs_leaderboard")


def test_one_node_scenarios_are_global():
    assert Scenario(16, 8, 1, 8).policy == "global"
    assert Scenario(288, 8, 4, 32).policy == "hierarchical"
    assert Scenario(288, 6, 4, 32).policy == "global"


# ---------------------------------------------------------------- machine identity


def test_threads_are_fixed_and_recorded():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        fix_threads(1)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        identity = machine_identity("cpu")
        assert identity["threads"] == 1 and identity["logical_cores"] >= 1 and identity["cpu_model"]
        assert identity["numpy"] and identity["torch"]
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- registry and data


@pytest.fixture
def clean_registry(monkeypatch):
    registry.discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BROKEN", dict(registry._BROKEN))
    monkeypatch.setattr(registry, "_CONFLICTS", {})


def test_duplicate_names_withdraw_both_and_name_both_places(clean_registry):
    def first(*args):
        pass

    def second(*args):
        pass

    registry.register("twice")(first)
    registry.register("twice")(first)          # the same definition again: accepted
    with pytest.raises(registry.RegistryError, match=r"registered more than once: .*test_results.py:\d+ and "
                                                     r".*test_results.py:\d+"):
        registry.register("twice")(second)
    assert "twice" not in registry.list_algorithms()
    with pytest.raises(registry.RegistryError, match="more than once"):
        registry.algorithm_info("twice")
    assert "twice" in registry.broken_algorithms()


def test_list_shows_modules_that_failed(clean_registry, capsys):
    registry._BROKEN["contrib"] = "algorithms/contrib.py failed to import: ImportError: no module named x"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "not loaded:" in out and "contrib" in out and "ImportError" in out


def test_import_goes_to_the_user_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EPLB_BENCH_DATA", str(tmp_path / "data"))
    trace = tmp_path / "dump.pt"
    torch.save({"logical_count": torch.randint(0, 50, (300, 2, 16))}, trace)
    assert main(["datasets", "import", str(trace), "--name", "mine", "--scenario", "32,1,1,8"]) == 0
    assert (tmp_path / "data" / "mine.json").is_file() and "mine" not in shipped_names()
    assert not (datasets_dir() / "mine.json").exists()
    assert "mine" in capsys.readouterr().out
    assert main(["run", "--datasets", "mine", "--algorithms", "deepseek", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["dataset"] == "mine"
    assert main(["datasets", "import", str(trace), "--name", SMALL]) == 1   # a shipped name is refused


def test_bounds_never_weaken_what_is_stored(tmp_path, monkeypatch, capsys):
    for path in datasets_dir().glob(f"{SMALL}.*"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setenv("EPLB_BENCH_DATASETS", str(tmp_path))
    manifest = tmp_path / f"{SMALL}.json"
    before = json.loads(manifest.read_text())["bounds"]
    assert main(["bounds", "--datasets", SMALL, "--time-limit", "0", "--jobs", "1", "--quiet"]) == 0
    assert "stronger and stay" in capsys.readouterr().out
    after = json.loads(manifest.read_text())["bounds"]
    for key, slot in before.items():
        for policy, entry in slot.items():
            if isinstance(entry, dict):
                assert after[key][policy]["lower_bound"] == entry["lower_bound"]


# ---------------------------------------------------------------- exit codes


def test_exit_codes_follow_one_rule(tmp_path, capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and "eplb-bench" in capsys.readouterr().out
    assert main(["run", "--algorithms", ""]) == 2
    assert main(["run", "--datasets", ","]) == 2
    assert main(["run", "--threads", "0"]) == 2
    assert main(["leaderboard", str(tmp_path / "missing.jsonl")]) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["leaderboard", str(empty), "--out", str(tmp_path / "b")]) == 1
    assert main(["run", "--datasets", str(tmp_path / "nothing.npz")]) == 1


def test_progress_goes_only_to_a_terminal(capsys, monkeypatch):
    from eplb_bench.commands.common import progress_bar

    assert main(["run", "--datasets", SMALL, "--algorithms", "deepseek", "--json"]) == 0
    assert "job/s" not in capsys.readouterr().err and "it/s" not in capsys.readouterr().err
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress_bar(3, "run", quiet=True).disable
