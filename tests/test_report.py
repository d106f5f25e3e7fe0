"""Tables from records: grouping, ranking by the chosen scorer, failed entries last."""

from eplb_bench.reports.text import format_table


def record(name, gpu, runtime_ms, status="ok", scenario="s"):
    scores = None if status != "ok" else {"adrs": gpu / 2, "skydiscover": 1 - gpu, "adrs_leaderboard": 90 * gpu}
    return {"algorithm": name, "dataset": "d", "scenario": scenario, "num_replicas": 16, "num_groups": 1,
            "num_nodes": 1, "num_gpus": 8, "device": "cpu", "predictor": "last", "policy": "global",
            "status": status, "error": None if status == "ok" else "boom", "balancedness_gpu": gpu,
            "balancedness_gpu_insample": gpu, "balancedness_slot": gpu, "internode_share": 0.0,
            "runtime_ms": runtime_ms, "scores": scores}


def rows(text):
    """The balancer column of the first table (title, header, rule, rows)."""
    return [line.split()[1] for line in text.split("\n\n")[0].splitlines()[3:]]


def test_ranked_best_first_by_the_chosen_scorer_failures_last():
    records = [record("middle", 0.8, 1.0), record("broken", 0.0, 1.0, status="error"),
               record("best", 0.9, 1.0), record("worst", 0.7, 1.0)]
    table = format_table(records, "adrs_leaderboard")
    assert rows(table) == ["best", "middle", "worst", "broken"]
    first = table.split("\n\n")[0].splitlines()
    assert first[3].split()[0] == "1" and first[-1].split()[0] == "-"
    assert "error: boom" in first[-1]
    standings = table.split("\n\n")[1].splitlines()
    assert standings[0].startswith("Standings on ") and [line.split()[1] for line in standings[3:7]] == [
        "best", "middle", "worst", "broken"]
    # skydiscover here rewards low balance: the order flips
    assert rows(format_table(records, "skydiscover")) == ["worst", "middle", "best", "broken"]


def test_one_table_per_scenario():
    table = format_table([record("a", 0.8, 1.0, scenario="one"), record("a", 0.8, 1.0, scenario="two")],
                         "adrs_leaderboard")
    assert "d one: R=16" in table and "d two: R=16" in table
    assert table.count("Standings on ") == 1 and table.count("Balance standings on ") == 1
