"""The leaderboard: reading result files, standings, the Pareto front, and the written page."""

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

from eplb_bench.core.record import Record
from eplb_bench.core.results import ResultsError, latest_by_identity, read_results
from eplb_bench.reports.leaderboard import HELDOUT_HEADING, write_leaderboard
from eplb_bench.reports.standings import NOT_ISOLATED_LEGEND, is_isolated, machine_of, pareto_front, standings


def load_records(paths):
    """What the leaderboard ranks: every valid record, the latest of each identity and
    machine; a skipped line raises here, so its report can be checked."""
    read = read_results(paths)
    if read.skipped:
        raise ResultsError(read.skipped[0])
    return latest_by_identity(read.records, machine_of)[0]


def machine_label(values):
    return machine_of(values if isinstance(values, Record) else Record.from_dict(values))

CPU_HOST = {"machine": "x86_64", "processor": "x86_64", "python": "3.11.7", "torch": "2.13.0+cpu"}
GPU_HOST = {**CPU_HOST, "torch": "2.13.0+cu128", "gpu": "NVIDIA H100 80GB HBM3"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(name, scenario="s1", gpu=0.9, runtime_ms=1.0, status="ok", device="cpu", host=CPU_HOST,
           ceiling=None, scores=None):
    ok = status == "ok"
    if scores is None and ok:
        scores = {"adrs": gpu / 2, "skydiscover": 1 - gpu, "adrs_leaderboard": 90 * gpu}
    return {"algorithm": name, "dataset": "d", "scenario": scenario, "num_replicas": 16, "num_groups": 1,
            "num_nodes": 1, "num_gpus": 8, "device": device, "predictor": "last", "policy": "global",
            "status": status, "error": None if ok else "boom <b>|</b>",
            "balancedness_gpu": gpu if ok else None, "balancedness_gpu_insample": min(1.0, gpu + 0.05) if ok else None,
            "balancedness_slot": gpu if ok else None, "internode_share": 0.0,
            "runtime_ms": runtime_ms if ok else None, "balancedness_ceiling": ceiling,
            "optimality_gap": None if ceiling is None or not ok else ceiling - gpu,
            "scores": scores if ok else None, "host": host, "timestamp": "2026-01-01T00:00:00+00:00"}


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


# ---------------------------------------------------------------- load_records


def test_load_records_reads_every_object_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [record("a"), "", "   ", record("b")])
    other = write_jsonl(tmp_path / "b.jsonl", [record("c", scenario="s2")])
    loaded = load_records([path, str(other)])
    assert [r["algorithm"] for r in loaded] == ["a", "b", "c"]
    assert loaded[0] == Record.from_dict(record("a"))


@pytest.mark.parametrize("bad, reason", [
    ('{"algorithm": "a", "dataset"', "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"algorithm": "a", "dataset": "d"}', "lacks status"),
])
def test_a_bad_line_names_file_and_line(tmp_path, bad, reason):
    path = write_jsonl(tmp_path / "r.jsonl", [record("a"), "", bad, record("b")])
    with pytest.raises(ResultsError) as caught:
        load_records([path])
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ") and reason in message
    assert "\n" not in message


def test_the_last_duplicate_wins_and_machines_are_kept_apart(tmp_path):
    first, second = record("a", gpu=0.5), record("a", gpu=0.7)
    on_gpu = record("a", gpu=0.6, device="cuda:0", host=GPU_HOST)
    path = write_jsonl(tmp_path / "r.jsonl", [first, record("b"), on_gpu])
    later = write_jsonl(tmp_path / "later.jsonl", [second])
    loaded = load_records([path, later])
    by_machine = {(r["algorithm"], machine_label(r)): r["balancedness_gpu"] for r in loaded}
    assert len(loaded) == 3
    assert by_machine[("a", "cpu: x86_64, torch 2.13.0")] == 0.7
    assert by_machine[("a", "cuda: NVIDIA H100 80GB HBM3, torch 2.13.0")] == 0.6


def test_a_missing_file_is_a_results_error(tmp_path):
    with pytest.raises(ResultsError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        load_records([tmp_path / "nope.jsonl"])


def test_machine_label_names_device_kind_and_hardware():
    assert machine_label(record("a")) == "cpu: x86_64, torch 2.13.0"
    assert machine_label(record("a", device="cuda:1", host=GPU_HOST)) == "cuda: NVIDIA H100 80GB HBM3, torch 2.13.0"
    assert machine_label({"algorithm": "a", "dataset": "d", "status": "ok"}) == "cpu: unknown host"
    full = {**CPU_HOST, "cpu_model": "AMD EPYC 7B13", "logical_cores": 2, "threads": 1, "numpy": "2.1.0"}
    assert machine_label(record("a", host=full)) == "cpu: AMD EPYC 7B13, 2 cores, 1 thread, torch 2.13.0, numpy 2.1.0"
    assert machine_label(record("a", host=full)) != machine_label(record("a", host={**full, "threads": 2}))


# ---------------------------------------------------------------- pareto_front


def dominated_brute_force(points, i):
    runtime, balance = points[i]
    return any(r <= runtime and b >= balance and (r < runtime or b > balance) for r, b in points)


def test_pareto_front_by_hand():
    points = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.4), (2.0, 0.7), (4.0, 0.95), (1.0, 0.5)]
    assert pareto_front(points) == [True, True, False, True, False, True, True]
    assert pareto_front([]) == []
    # same balance, slower: dominated
    assert pareto_front([(1.0, 0.9), (2.0, 0.9)]) == [True, False]


def test_pareto_front_matches_brute_force_on_random_points():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        # coarse values so that ties in runtime, balance and whole points occur
        points = [(float(r), float(b)) for r, b in zip(rng.integers(1, 8, n), rng.integers(0, 6, n) / 5)]
        expected = [not dominated_brute_force(points, i) for i in range(n)]
        assert pareto_front(points) == expected, points


# ---------------------------------------------------------------- standings


def three_balancers():
    return [
        record("steady", "s1", gpu=0.8, runtime_ms=2.0), record("steady", "s2", gpu=0.6, runtime_ms=8.0),
        record("top", "s1", gpu=0.9, runtime_ms=1.0), record("top", "s2", gpu=0.7, runtime_ms=4.0),
        # best on s1 of all, but fails s2: its mean over one scenario must not lift it
        record("flaky", "s1", gpu=0.99, runtime_ms=1.0), record("flaky", "s2", status="timeout"),
    ]


def test_standings_means_and_ranking_by_hand():
    rows = standings(three_balancers(), "adrs_leaderboard")
    assert [row["algorithm"] for row in rows] == ["top", "steady", "flaky"]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    top, steady, flaky = rows
    assert top["scores"]["adrs_leaderboard"] == pytest.approx(90 * (0.9 + 0.7) / 2)
    assert top["scores"]["adrs"] == pytest.approx((0.45 + 0.35) / 2)
    assert steady["scores"]["skydiscover"] == pytest.approx((0.2 + 0.4) / 2)
    assert steady["balancedness_gpu"] == pytest.approx(0.7)
    assert steady["runtime_ms"] == pytest.approx(5.0)
    assert steady["runtime_ms_geomean"] == pytest.approx(4.0)
    assert (top["scenarios_ok"], top["scenarios_total"], top["complete"]) == (2, 2, True)
    # flaky: the mean is over the one scenario it was scored on, and it still ranks last
    assert flaky["scores"]["adrs_leaderboard"] == pytest.approx(90 * 0.99)
    assert flaky["scores"]["adrs_leaderboard"] > top["scores"]["adrs_leaderboard"]
    assert (flaky["scenarios_ok"], flaky["scenarios_total"], flaky["complete"]) == (1, 2, False)
    assert flaky["failed_statuses"] == ["timeout"] and flaky["failures"] == ["timeout (d s2)"]


def test_the_chosen_scorer_orders_complete_balancers():
    # skydiscover is 1 - gpu in these records: the order among complete ones flips
    rows = standings(three_balancers(), "skydiscover")
    assert [row["algorithm"] for row in rows] == ["steady", "top", "flaky"]
    with pytest.raises(ValueError, match="unknown scorer"):
        standings(three_balancers(), "nope")


def test_a_balancer_not_run_everywhere_is_incomplete():
    records = [record("a", "s1"), record("a", "s2"), record("b", "s1", gpu=0.99)]
    rows = standings(records, "adrs_leaderboard")
    assert [(row["algorithm"], row["complete"]) for row in rows] == [("a", True), ("b", False)]
    assert rows[1]["failures"] == [] and rows[1]["scenarios_total"] == 2


def test_two_machines_get_separate_rankings(tmp_path):
    cpu = [record("a", gpu=0.9, runtime_ms=5.0), record("b", gpu=0.8, runtime_ms=5.0)]
    gpu = [record("a", gpu=0.7, device="cuda:0", host=GPU_HOST), record("b", gpu=0.95, device="cuda:0", host=GPU_HOST)]
    rows = standings(cpu + gpu, "adrs_leaderboard")
    assert [(row["machine"].split(":")[0], row["algorithm"], row["rank"]) for row in rows] == [
        ("cpu", "a", 1), ("cpu", "b", 2), ("cuda", "b", 1), ("cuda", "a", 2)]
    assert all(row["scenarios_total"] == 1 for row in rows)
    markdown = write_leaderboard(cpu + gpu, tmp_path)["markdown"].read_text()
    assert "never mixed" in markdown
    assert "## Standings on cpu: x86_64, torch 2.13.0," in markdown
    assert "## Standings on cuda: NVIDIA H100 80GB HBM3, torch 2.13.0," in markdown
    one_machine = write_leaderboard(cpu, tmp_path / "one")["markdown"].read_text()
    assert "never mixed" not in one_machine


# ---------------------------------------------------------------- write_leaderboard


def table_rows(markdown, heading):
    """The balancer column of the first pipe table after `heading`."""
    section = markdown.split(heading, 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


@pytest.fixture(scope="module")
def measured_records():
    """Real records: two shipped balancers on the small shipped dataset, plus one failure."""
    from eplb_bench import load_dataset
    from eplb_bench.core.registry import algorithm_info
    from eplb_bench.evaluation.runner import Job, run_job

    dataset = load_dataset("mixtral-8x7b")
    records = [run_job(Job(algorithm_info(name), dataset, dataset.scenarios[0])) for name in ("fast", "deepseek")]
    assert all(r["status"] == "ok" for r in records)
    broken = dict(records[0], algorithm="broken", status="error", error="window 3: ValueError: <bad> & worse",
                  scores=None, balancedness_gpu=None, balancedness_gpu_insample=None, runtime_ms=None,
                  balancedness_ceiling=None, optimality_gap=None)
    return records + [broken]


def expected_order(records, scorer):
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["scores"][scorer])
    return [r["algorithm"] for r in ok] + sorted(r["algorithm"] for r in records if r["status"] != "ok")


def check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200 and image.shape[2] in (3, 4)
    return image


def test_write_leaderboard_on_measured_records(measured_records, tmp_path):
    paths = write_leaderboard(measured_records, tmp_path / "out", scorer="adrs_leaderboard")
    assert set(paths) == {"markdown", "scatter", "bars", "runtime", "migrations", "speedup", "html"}
    assert all(path.parent == tmp_path / "out" and path.is_file() for path in paths.values())
    markdown = paths["markdown"].read_text()
    order = expected_order(measured_records, "adrs_leaderboard")
    standings_rows = table_rows(markdown, "## Standings on ")
    assert [row[1] for row in standings_rows] == order
    assert standings_rows[0][0] == "1" and standings_rows[-1][0] == "3\\*" and standings_rows[-1][-1] == "0/1"
    # the chosen scorer is the first score column, then the others
    header = markdown.split("## Standings on ", 1)[1].splitlines()[2]
    assert [cell.strip() for cell in header.strip("|").split("|")][2:5] == ["adrs_leaderboard", "adrs", "skydiscover"]
    scenario_rows = table_rows(markdown, "### mixtral-8x7b EP8")
    assert [row[1] for row in scenario_rows] == order
    assert scenario_rows[-1][-1] == "error: window 3: ValueError: &lt;bad&gt; &amp; worse"
    assert scenario_rows[-1][2] == "-" and scenario_rows[0][4] != "-"  # ceiling known for ok records
    for kind in ("scatter", "bars", "runtime", "migrations", "speedup"):
        check_png(paths[kind])
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert page.count('src="data:image/png;base64,') == 5
    assert "&lt;bad&gt; &amp; worse" in page and "<bad>" not in page


def test_another_scorer_reorders_the_page(measured_records, tmp_path):
    markdown = write_leaderboard(measured_records, tmp_path, scorer="skydiscover")["markdown"].read_text()
    assert [row[1] for row in table_rows(markdown, "## Standings on ")] == expected_order(measured_records,
                                                                                          "skydiscover")
    assert "Ranked by skydiscover (" in markdown


def test_no_scored_results_still_writes_every_file(tmp_path):
    failed = [record("a", status="crash"), record("b", status="memory", scenario="s2")]
    written = {name: write_leaderboard(records, tmp_path / name) for name, records in (("failed", failed), ("empty", []))}
    for paths in written.values():
        for kind in ("scatter", "bars"):
            check_png(paths[kind])
        assert "<html" in paths["html"].read_text()
    failed_markdown = written["failed"]["markdown"].read_text()
    assert "crash: boom &lt;b&gt;\\|&lt;/b&gt;" in failed_markdown and "memory: boom" in failed_markdown
    assert [row[1] for row in table_rows(failed_markdown, "## Standings on ")] == ["a", "b"]
    assert "&lt;b&gt;" in written["failed"]["html"].read_text()
    assert "No records." in written["empty"]["markdown"].read_text()


def test_missing_values_show_as_a_dash(tmp_path):
    records = [record("a", scores={"adrs": 0.5}), record("b", ceiling=1.0)]
    markdown = write_leaderboard(records, tmp_path)["markdown"].read_text()
    rows = {row[1]: row for row in table_rows(markdown, "### d s1")}
    assert rows["a"][7] == "-" and rows["a"][8] == "-"  # no ceiling, no gap
    assert rows["b"][7] == "1.0000" and rows["b"][8] == "10.00%"
    standings_rows = {row[1]: row for row in table_rows(markdown, "## Standings on ")}
    assert standings_rows["a"][2] == "-" and standings_rows["a"][3] == "0.5000"


# ---------------------------------------------------------------- splits, isolation, malformed values


def heldout(base, seed):
    return dict(base, split="heldout", heldout_seed=seed)


def public_and_heldout():
    """Public: a beats b. Held-out: b beats a, a pooled over two seeds, and c only held-out."""
    public = [record("a", gpu=0.9), record("b", gpu=0.8)]
    drawn = [heldout(record("b", gpu=0.95), 11), heldout(record("a", gpu=0.7), 11), heldout(record("a", gpu=0.6), 12),
             heldout(record("c", gpu=0.99), 13)]
    return public, drawn


def cells(rows, column):
    return [row[column] for row in rows]


def test_heldout_records_are_ranked_in_their_own_labelled_section(tmp_path):
    public, drawn = public_and_heldout()
    rows = standings(public + drawn, "adrs_leaderboard")
    assert [(row["split"], row["algorithm"], row["rank"]) for row in rows] == [
        ("public", "a", 1), ("public", "b", 2), ("heldout", "c", 1), ("heldout", "b", 2), ("heldout", "a", 3)]
    pooled = rows[-1]
    assert pooled["heldout_seeds"] == [11, 12] and pooled["balancedness_gpu"] == pytest.approx(0.65)
    assert (pooled["scenarios_ok"], pooled["scenarios_total"], pooled["complete"]) == (1, 1, True)

    paths = write_leaderboard(public + drawn, tmp_path)
    markdown = paths["markdown"].read_text()
    assert markdown.index("## Standings on ") < markdown.index(f"## {HELDOUT_HEADING}")
    assert "pooled" in markdown.split(f"## {HELDOUT_HEADING}", 1)[1]
    assert "6 records (2 public, 4 held-out)" in markdown
    assert cells(table_rows(markdown, "## Standings on "), 1) == ["a", "b"]
    assert cells(table_rows(markdown, "### d s1"), 1) == ["a", "b"]
    held_standings = table_rows(markdown, "### Held-out standings on cpu: x86_64, torch 2.13.0,")
    assert cells(held_standings, 0) == ["1", "2", "3"] and cells(held_standings, 1) == ["c", "b", "a"]
    assert cells(held_standings, -1) == ["1", "1", "2"]  # seeds pooled
    held_scenario = table_rows(markdown, "#### Held-out d s1")
    assert [(row[1], row[2]) for row in held_scenario] == [("c", "13"), ("b", "11"), ("a", "11"), ("a", "12")]
    assert "Rows are draws of different seeds." in markdown

    page = paths["html"].read_text()
    assert f"<h2 id=\"heldout\">{HELDOUT_HEADING}</h2>" in page
    assert page.index('<table id="standings">') < page.index('<table id="heldout-standings">')
    assert "Held-out standings on cpu" in page and "Held-out d s1" in page


def test_a_heldout_only_file_has_no_public_standings(tmp_path):
    _, drawn = public_and_heldout()
    markdown = write_leaderboard(drawn, tmp_path)["markdown"].read_text()
    assert "No public records." in markdown and "## Standings on " not in markdown
    assert cells(table_rows(markdown, "### Held-out standings on "), 1) == ["c", "b", "a"]


def test_heldout_records_never_change_the_public_standings(tmp_path):
    public, drawn = public_and_heldout()
    alone = standings(public, "adrs_leaderboard")
    mixed = [row for row in standings(public + drawn, "adrs_leaderboard") if row["split"] == "public"]
    assert mixed == alone
    with_heldout = write_leaderboard(public + drawn, tmp_path / "mixed")["markdown"].read_text()
    without = write_leaderboard(public, tmp_path / "public")["markdown"].read_text()
    public_part = with_heldout.split("## Standings on ", 1)[1].split(f"## {HELDOUT_HEADING}", 1)[0]
    assert public_part.rstrip() == without.split("## Standings on ", 1)[1].rstrip()


def test_a_heldout_record_does_not_replace_the_public_one(tmp_path):
    base = record("a")
    again = heldout(record("a", gpu=0.5), 2)
    path = write_jsonl(tmp_path / "r.jsonl", [base, heldout(base, 1), heldout(base, 2), again])
    loaded = load_records([path])
    assert [(r.get("split", "public"), r.get("heldout_seed")) for r in loaded] == [
        ("public", None), ("heldout", 1), ("heldout", 2)]
    assert loaded[-1]["balancedness_gpu"] == 0.5  # the same draw again: the last one wins


def test_results_that_were_not_isolated_are_marked(tmp_path):
    records = [dict(record("safe.py", gpu=0.8), isolation="namespaces"),
               dict(record("risky.py", gpu=0.9), isolation="process"), record("fast", gpu=0.7)]
    assert [is_isolated(Record.from_dict(r)) for r in records] == [True, False, True]
    assert not is_isolated(Record.from_dict(record("inproc.py")))  # a program file run in the harness's own process
    rows = standings(records, "adrs_leaderboard")
    assert [(row["algorithm"], row["isolated"]) for row in rows] == [
        ("risky.py", False), ("safe.py", True), ("fast", True)]
    paths = write_leaderboard(records + [heldout(dict(record("risky.py"), isolation="process"), 5)], tmp_path)
    markdown = paths["markdown"].read_text()
    assert cells(table_rows(markdown, "## Standings on "), 1) == ["risky.py †", "safe.py", "fast"]
    assert cells(table_rows(markdown, "### d s1"), 1) == ["risky.py †", "safe.py", "fast"]
    assert cells(table_rows(markdown, "### Held-out standings on "), 1) == ["risky.py †"]
    assert cells(table_rows(markdown, "#### Held-out d s1"), 1) == ["risky.py †"]
    assert markdown.count(NOT_ISOLATED_LEGEND) == 6  # under each table with a marked row (two standings each)
    page = paths["html"].read_text()
    assert "risky.py †</td>" in page and "safe.py †" not in page
    assert page.count(html.escape(NOT_ISOLATED_LEGEND)) == 6
    trusted = write_leaderboard(records[::2], tmp_path / "trusted")["markdown"].read_text()
    assert "†" not in trusted


def bad_value(**fields):
    return json.dumps(dict(record("a"), **fields))  # json writes NaN and Infinity, as json.loads reads them


@pytest.mark.parametrize("bad, reason", [
    (bad_value(runtime_ms=float("nan")), "NaN is not a measurement"),
    (bad_value(runtime_ms=-1.0), "runtime_ms is negative (-1.0)"),
    (bad_value(runtime_ms=float("inf")), "Infinity is not a measurement"),
    (bad_value(runtime_ms_min=float("-inf")), "-Infinity is not a measurement"),
    (bad_value(runtime_ms_max=float("nan")), "NaN is not a measurement"),
    (bad_value(runtime_ms="1.5"), "runtime_ms must be float or int, got str"),
    (bad_value(runtime_ms=True), "runtime_ms must be float or int, got a boolean"),
    (bad_value(balancedness_gpu=float("nan")), "NaN is not a measurement"),
    (bad_value(scores={"adrs": float("nan")}), "NaN is not a measurement"),
    (bad_value(scores={"adrs_leaderboard": float("inf")}), "Infinity is not a measurement"),
    (bad_value(scores=[1.0]), "scores must be dict, got list"),
    (bad_value(status=1), "status must be str, got int"),
    (bad_value(status=None), "status must not be null"),
    (bad_value(split="private"), "split must be one of public, heldout"),
    (bad_value(split="heldout"), "needs an integer heldout_seed"),
    (bad_value(split="heldout", heldout_seed="7"), "heldout_seed must be int, got str"),
    (bad_value(isolation=1), "isolation must be str, got int"),
    ('{"algorithm": "a", "dataset": "d", "status": "ok", "runtime_ms": NaN}', "NaN is not a measurement"),
    ('{"algorithm": "a", "dataset": "d", "status": "ok", "runtime_ms": -Infinity}', "-Infinity is not a measurement"),
])
def test_unusable_values_are_malformed(tmp_path, bad, reason):
    path = write_jsonl(tmp_path / "r.jsonl", [record("a"), "", bad, record("b")])
    with pytest.raises(ResultsError) as caught:
        load_records([path])
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ") and reason in message and "\n" not in message


def test_usable_values_still_load(tmp_path):
    fine = [dict(record("a"), runtime_ms=0, runtime_ms_min=0.0, runtime_ms_max=3),
            record("b", scores={"adrs_leaderboard": -4.5, "adrs": None}),  # a score may be negative
            record("c", status="timeout"), heldout(record("d"), 2**63), dict(record("e"), split=None)]
    assert len(load_records([write_jsonl(tmp_path / "r.jsonl", fine)])) == 5


# ---------------------------------------------------------------- headless Chromium


class TableAndImages(HTMLParser):
    """Rows of the table with id="standings" and every <img> of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self._in_standings, self._row = [], [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "standings":
            self._in_standings = True
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "tr" and self._in_standings:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_standings = False
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data


def chromium_binary():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "headless Chromium (chromium or chromium-browser on PATH) is needed to render the leaderboard"
        if os.environ.get("EPLB_BENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def run_chromium(binary, tmp_path, *args):
    profile = tmp_path / "profile"
    command = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=True)


def test_headless_chromium_renders_the_page(measured_records, tmp_path):
    binary = chromium_binary()
    page = write_leaderboard(measured_records, tmp_path / "out")["html"]
    dom = run_chromium(binary, tmp_path, "--dump-dom", page.as_uri()).stdout
    parsed = TableAndImages()
    parsed.feed(dom)
    assert [row[1] for row in parsed.rows] == expected_order(measured_records, "adrs_leaderboard")
    assert len(parsed.images) == 5
    assert all(image["src"].startswith("data:image/png;base64,") and image.get("alt") for image in parsed.images)

    screenshot = tmp_path / "shot.png"
    run_chromium(binary, tmp_path, f"--screenshot={screenshot}", "--window-size=1200,2000", page.as_uri())
    image = check_png(screenshot)[..., :3]
    assert image.std() > 0
    # text alone covers little of the window; the two embedded plots cover much more
    not_white = (image < 0.9).any(axis=-1).mean()
    assert not_white > 0.05, f"only {not_white:.1%} of the screenshot is not white"


def test_chromium_screenshot_without_plots_is_mostly_white(measured_records, tmp_path):
    """The not-white threshold above separates a page with its plots from one without."""
    binary = chromium_binary()
    page = write_leaderboard(measured_records, tmp_path / "out")["html"]
    stripped = tmp_path / "stripped.html"
    stripped.write_text(re.sub(r"<img [^>]*>", "", page.read_text()))
    screenshot = tmp_path / "shot.png"
    run_chromium(binary, tmp_path, f"--screenshot={screenshot}", "--window-size=1200,2000", stripped.as_uri())
    image = check_png(screenshot)[..., :3]
    assert (image < 0.9).any(axis=-1).mean() < 0.05



def test_leaderboard_command_from_run_results(tmp_path, capsys):
    from eplb_bench.cli import main

    results = tmp_path / "results.jsonl"
    assert main(["run", "--algorithms", "fast,deepseek", "--datasets", "mixtral-8x7b", "--out", str(results),
                 "--json"]) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    capsys.readouterr()
    assert main(["leaderboard", str(results), "--out", str(tmp_path / "board"), "--scorer", "adrs"]) == 0
    assert "2 record(s) from 1 file(s), ranked by adrs" in capsys.readouterr().out
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    best = max(records, key=lambda r: r["scores"]["adrs"])["algorithm"]
    assert f"| 1 | {best} |" in markdown
    assert all((tmp_path / "board" / name).stat().st_size > 0
               for name in ("leaderboard.html", "balance_vs_runtime.png", "balance_by_dataset.png"))
    results.write_text(results.read_text() + "{not json\n")   # a cut line is skipped and reported
    assert main(["leaderboard", str(results), "--out", str(tmp_path / "again")]) == 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{results}:3: malformed JSON" in error[0] and "skipped" in error[0]
