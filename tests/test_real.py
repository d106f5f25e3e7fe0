"""Real loads: SGLang expert-location files, the shipped deepseek-v3-sglang dataset, the
cross-workload protocol, and export of placements for SGLang."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from eplb_bench import Scenario, get_algorithm
from eplb_bench.cli import main
from eplb_bench.core.contract import PlacementError, placement_of, validate_placement
from eplb_bench.core.record import CROSS_WORKLOAD, NEXT_WINDOW, Record, RecordError
from eplb_bench.core.registry import AlgorithmInfo
from eplb_bench.core.results import read_results
from eplb_bench.data.catalog import import_dataset, load_dataset
from eplb_bench.data.dataset import Dataset, DatasetError
from eplb_bench.data.formats import sglang_placement
from eplb_bench.data.real import NAME, WORKLOADS, cross_pairs
from eplb_bench.evaluation.runner import Job, job_records, run_job, run_records
from eplb_bench.reports.leaderboard import leaderboard_markdown

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sglang-deepseek-v3"


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def location_file(path: Path, counts) -> Path:
    path.write_text(json.dumps({"logical_count": counts}))
    return path


# ---------------------------------------------------------------- the format


def test_a_logical_count_file_is_one_static_workload_without_its_dense_layers(tmp_path):
    counts = [[0, 0, 0, 0], [4, 3, 2, 1], [0, 0, 0, 0], [1, 1, 1, 9]]
    dataset = load_dataset(location_file(tmp_path / "prefill.json", counts))
    assert dataset.protocol == CROSS_WORKLOAD and dataset.workload_names == ["prefill"]
    assert dataset.windows.tolist() == [[[4, 3, 2, 1], [1, 1, 1, 9]]]
    assert dataset.meta["source_layers"]["count"] == 4 and dataset.meta["source_layers"]["dropped"] == [0, 2]
    assert dataset.scored_pairs() == [(0, 0)]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not valid JSON"),
        ('{"logical_count": [[1, 2], [3]]}', "logical_count is not a rectangular array of numbers"),
        ('{"logical_count": [[1, -2], [3, 4]]}', "logical_count contain negative values"),
        ('{"logical_count": [[1, NaN], [3, 4]]}', "logical_count contains NaN or infinite values"),
        ('{"logical_count": [[["a"]]]}', "logical_count is not a rectangular array of numbers"),
        ('{"logical_count": [1, 2, 3]}', "logical_count has shape (3,), expected 2-D or 3-D"),
        ('{"logical_count": []}', "logical_count has shape (0,)"),
        ('{"logical_count": [[0, 0], [0, 0]]}', "every count is zero"),
        ('{"logical_count": [[true, false], [1, 2]]}', "not a rectangular array of numbers"),
        ('{"logical_count": [["1", "2"], [1, 2]]}', "not a rectangular array of numbers"),
        ('{"logical_count": [[1' + "0" * 5000 + ', 2]]}', "unusable JSON"),
        ('{"logical_count": [[[4e18, 1]], [[4e18, 1]]]}', "too large"),
        ('{"physical_to_logical_map": [[0, 1]]}', "holds a placement (physical_to_logical_map) but no logical_count"),
    ],
)
def test_malformed_location_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_tiny_expanded_tensor_file_is_refused_before_it_is_converted(tmp_path):
    bomb = tmp_path / "bomb.pt"
    torch.save({"logical_count": torch.ones(1).expand(12000, 12000)}, bomb)
    assert bomb.stat().st_size < 4096
    with pytest.raises(DatasetError, match="expanded view"):
        load_dataset(bomb)
    flat = tmp_path / "one.pt"
    torch.save({"logical_count": torch.tensor([[0, 0, 0], [3, 2, 1]])}, flat)
    single = load_dataset(flat)   # a 2-D logical_count in a .pt is one static workload too
    assert single.protocol == CROSS_WORKLOAD and single.windows.tolist() == [[[3, 2, 1]]]


@pytest.mark.parametrize(
    "mapping, message",
    [([[0, 1.5]], "non-negative integer expert ids"), ([[0, -1]], "non-negative integer expert ids"),
     ([0, 1], "expected 2-D"), ([["x"]], "not a rectangular array")],
)
def test_malformed_placements_are_refused(tmp_path, mapping, message):
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"physical_to_logical_map": mapping}))
    with pytest.raises(DatasetError, match=message):
        sglang_placement(path)
    path.write_text(json.dumps({"logical_count": [[1, 2]]}))
    with pytest.raises(DatasetError, match="holds no physical_to_logical_map"):
        sglang_placement(path)


def test_placement_of_agrees_with_brute_force():
    generator = torch.Generator().manual_seed(3)
    phy2log = torch.randint(0, 6, (5, 12), generator=generator)
    phy2log[:, :6] = torch.arange(6)          # every expert at least once
    placement = placement_of(phy2log, 6)
    validate_placement(*placement, num_logical=6, num_replicas=12, num_gpus=4)
    for layer in range(5):
        for expert in range(6):
            slots = [slot for slot in range(12) if phy2log[layer, slot] == expert]
            assert placement.logcnt[layer, expert] == len(slots)
            listed = placement.log2phy[layer, expert].tolist()
            assert listed == slots + [-1] * (len(listed) - len(slots))
    with pytest.raises(PlacementError, match="outside 0..5"):
        placement_of(torch.tensor([[0, 6]]), 6)


# ---------------------------------------------------------------- importing collections


def test_import_of_several_files_makes_a_collection_with_its_pairs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EPLB_BENCH_DATA", str(tmp_path / "data"))
    short = location_file(tmp_path / "short.json", [[0] * 8, [8, 1, 1, 1, 1, 1, 1, 2]])
    long = location_file(tmp_path / "long.json", [[0] * 8, [1, 1, 1, 1, 1, 1, 2, 8]])
    code, out, _ = run_cli(capsys, "datasets", "import", str(short), str(long), "--name", "two", "--groups", "1",
                           "--scenario", "12,1,1,4")
    assert code == 0 and "2 static workload(s), 2 pair(s)" in out and "dropped: [0]" in out
    dataset = load_dataset("two")
    assert dataset.workload_names == ["short", "long"] and dataset.meta["pairs"] == [["short", "long"], ["long", "short"]]
    assert dataset.scored_pairs() == [(0, 0), (1, 1), (0, 1), (1, 0)]
    code, _, _ = run_cli(capsys, "datasets", "import", str(short), str(long), "--name", "one-pair", "--groups", "1",
                         "--pair", "short:long")
    assert code == 0 and load_dataset("one-pair").meta["pairs"] == [["short", "long"]]
    for pair, message in (("short:wide", "unknown workload 'wide'"), ("short:short", "in-sample is always scored"),
                          ("short", "PLAN:SERVE")):
        code, _, err = run_cli(capsys, "datasets", "import", str(short), str(long), "--name", "x", "--pair", pair)
        assert code in (1, 2) and message in err
    other = location_file(tmp_path / "other.json", [[1, 2, 3, 4]])
    with pytest.raises(DatasetError, match="has shape"):
        import_dataset([short, other], "mixed", directory=tmp_path / "data")
    (tmp_path / "again").mkdir()
    twin = location_file(tmp_path / "again" / "short.json", [[0] * 8, [1] * 8])
    with pytest.raises(DatasetError, match="repeat"):
        import_dataset([short, twin], "twins", directory=tmp_path / "data")


@pytest.mark.parametrize(
    "change, message",
    [({"protocol": "shuffled"}, "unknown protocol"),
     ({"workloads": [{"name": "a"}, {"name": "a"}]}, "workload names repeat"),
     ({"workloads": [{"title": "a"}]}, "needs workloads, each with a name"),
     ({"pairs": [["a", "z"]]}, "unknown workload 'z'"),
     ({"pairs": [["a"]]}, "malformed pair"),
     ({"routing": {"top_k": 0}}, "routing.top_k must be one positive integer"),
     ({"workloads": [{"name": "a"}], "pairs": []}, "2 windows for 1 workloads")],
)
def test_malformed_collection_manifests_are_refused(tmp_path, change, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(changed_collection(tmp_path, change))


def changed_collection(tmp_path: Path, change: dict) -> Path:
    """A two-workload collection imported into tmp_path, its manifest then changed."""
    import_dataset([location_file(tmp_path / "a.json", [[1, 2]]), location_file(tmp_path / "b.json", [[2, 1]])],
                   "pair", directory=tmp_path, num_groups=1, scenarios=[Scenario(2, 1, 1, 1)])
    manifest = json.loads((tmp_path / "pair.json").read_text())
    manifest.update(change)
    (tmp_path / "pair.json").write_text(json.dumps(manifest))
    return tmp_path / "pair.json"


# ---------------------------------------------------------------- the protocol


def two_workloads() -> Dataset:
    """A: [4, 2, 1, 1] and B: [2, 2, 2, 2], one layer; planned A -> B and B -> A."""
    windows = torch.tensor([[[4, 2, 1, 1]], [[2, 2, 2, 2]]])
    return Dataset(name="static", windows=windows, num_groups=1, scenarios=[Scenario(4, 1, 1, 2)],
                   window_steps=None, meta={"protocol": CROSS_WORKLOAD, "workloads": [{"name": "A"}, {"name": "B"}],
                                            "pairs": [["A", "B"], ["B", "A"]]})


def identity_balancer(calls):
    def balance(weight, num_replicas, num_groups, num_nodes, num_gpus):
        calls.append(weight.tolist())
        if weight.tolist() == [[2, 2, 2, 2]] and "fail on B" in calls:
            raise RuntimeError("no plan for B")
        return placement_of(torch.arange(num_replicas).repeat(weight.shape[0], 1) % weight.shape[1], weight.shape[1])
    return balance


def test_cross_workload_scores_each_pair_from_one_plan_per_workload():
    # Slots 0-3 hold experts 0-3, GPU 0 experts 0 and 1: A loads the GPUs 6 and 2
    # (balancedness 4 / 6), B 4 and 4 (balancedness 1).
    calls = []
    records = run_records(Job(AlgorithmInfo("identity", identity_balancer(calls)), two_workloads(),
                              Scenario(4, 1, 1, 2)))
    assert len(calls) == 3, "a warm-up, then one plan per workload, whatever the number of pairs"
    by_pair = {(r.plan_workload, r.serve_workload): r for r in records}
    assert list(by_pair) == [("A", "A"), ("B", "B"), ("A", "B"), ("B", "A")]
    expected = {("A", "A"): (2 / 3, 2 / 3), ("B", "B"): (1.0, 1.0), ("A", "B"): (1.0, 2 / 3), ("B", "A"): (2 / 3, 1.0)}
    for pair, (served, in_sample) in expected.items():
        record = by_pair[pair]
        assert record.status == "ok" and record.protocol == CROSS_WORKLOAD
        assert record.balancedness_gpu == pytest.approx(served)
        assert record.balancedness_gpu_insample == pytest.approx(in_sample)
        assert record.migrated_replicas is None and record.prev_placement.startswith("none")
        Record.from_json(record.to_json())
    assert len({r.scenario_key() for r in records}) == 4, "each pair is a scenario of its own"
    with pytest.raises(ValueError, match="run_records"):
        run_job(Job(AlgorithmInfo("identity", identity_balancer([])), two_workloads(), Scenario(4, 1, 1, 2)))


def test_a_failure_on_one_workload_fails_only_its_records():
    calls = ["fail on B"]
    records = run_records(Job(AlgorithmInfo("picky", identity_balancer(calls)), two_workloads(), Scenario(4, 1, 1, 2)))
    statuses = {(r.plan_workload, r.serve_workload): (r.status, r.error) for r in records}
    assert statuses[("A", "A")][0] == "ok" and statuses[("A", "B")][0] == "ok"
    for pair in (("B", "B"), ("B", "A")):
        assert statuses[pair][0] == "error" and "workload B: RuntimeError: no plan for B" in statuses[pair][1]


def test_records_name_their_protocol_and_pairs_only_under_cross_workload():
    base = {"algorithm": "a", "dataset": "d", "status": "ok"}
    Record.from_dict({**base, "protocol": NEXT_WINDOW})
    Record.from_dict({**base, "protocol": CROSS_WORKLOAD, "plan_workload": "A", "serve_workload": "B"})
    for bad in ({"protocol": "shuffled"}, {"protocol": CROSS_WORKLOAD},
                {"protocol": NEXT_WINDOW, "plan_workload": "A", "serve_workload": "B"}):
        with pytest.raises(RecordError):
            Record.from_dict({**base, **bad})


def test_cross_workload_run_resumes_and_ranks_pairs_as_scenarios(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EPLB_BENCH_DATA", str(tmp_path / "data"))
    files = [location_file(tmp_path / f"{name}.json", counts) for name, counts in
             (("short", [[0] * 8, [8, 1, 1, 1, 1, 1, 1, 2]]), ("long", [[0] * 8, [1, 1, 1, 1, 1, 1, 2, 8]]))]
    assert run_cli(capsys, "datasets", "import", *map(str, files), "--name", "two", "--groups", "1",
                   "--scenario", "12,1,1,4")[0] == 0
    out = tmp_path / "r.jsonl"
    code, _, _ = run_cli(capsys, "run", "--datasets", "two", "--algorithms", "deepseek,fast", "--out", str(out),
                         "--quiet", "--json")
    assert code == 0 and len(out.read_text().splitlines()) == 8
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n")          # the last record lost: its job runs again
    code, stdout, err = run_cli(capsys, "run", "--datasets", "two", "--algorithms", "deepseek,fast", "--out",
                                str(out), "--resume", "--quiet", "--json")
    assert code == 0 and "1 job(s) to run" in err and len(stdout.splitlines()) == 4
    code, stdout, err = run_cli(capsys, "run", "--datasets", "two", "--algorithms", "deepseek,fast", "--out",
                                str(out), "--resume", "--quiet", "--json")
    assert "0 job(s) to run" in err
    code, _, err = run_cli(capsys, "run", "--datasets", "two", "--algorithms", "fast", "--predictor", "ema:0.5",
                           "--quiet", "--json")
    assert code == 2 and "every dataset named holds static workloads" in err
    code, stdout, err = run_cli(capsys, "run", "--datasets", "two,mixtral-8x7b", "--algorithms", "fast",
                                "--predictor", "ema:0.5", "--quiet", "--json")
    assert code == 0 and "does not apply to two" in err and "left out" in err
    assert {json.loads(line)["dataset"] for line in stdout.splitlines()} == {"mixtral-8x7b"}
    code, stdout, _ = run_cli(capsys, "run", "--datasets", "two,mixtral-8x7b", "--algorithms", "fast", "--quiet")
    standing = stdout[stdout.index("Standings"):]
    assert "fast [" not in standing and "5/5" in standing, "both protocols' records make one entry per balancer"
    records = read_results([out]).records
    markdown = leaderboard_markdown(records, "adrs_leaderboard")
    assert "plan short → serve long" in markdown and "short in-sample" in markdown and "GPU bal. served" in markdown


# ---------------------------------------------------------------- the shipped dataset


def test_the_real_dataset_ships_with_its_provenance_routing_and_pairs():
    dataset = load_dataset(NAME)
    manifest = dataset.meta
    assert dataset.protocol == CROSS_WORKLOAD and dataset.windows.shape == (8, 58, 256)
    assert dataset.workload_names == [w.name for w in WORKLOADS]
    assert (dataset.routing.top_k, dataset.routing.num_groups, dataset.routing.topk_groups) == (8, 8, 4)
    assert manifest["source_layers"]["count"] == 61 and manifest["source_layers"]["dropped"] == [0, 1, 2]
    for source in ("sgl-project/sglang issue 6017", "GeneratedRandomly/SGLang-reproduce", "c79682c", "issue 6353"):
        assert source in manifest["provenance"]
    assert [(s.num_replicas, s.num_groups, s.num_nodes, s.num_gpus) for s in dataset.scenarios] == [
        (288, 8, 4, 32), (288, 8, 18, 144)]
    assert manifest["pairs"] == cross_pairs()
    assert ["prefill_in1000out1000", "decode_in1000out1000"] in manifest["pairs"]
    assert ["prefill_in2000out100", "decode_in2000out100"] in manifest["pairs"]
    assert ["prefill_in512", "prefill_in2048"] in manifest["pairs"] and len(manifest["pairs"]) == 8
    # The pure prefill runs routed 8192-token batches: every layer's total is 2**26 tokens x experts.
    totals = dataset.windows[:3].sum(-1)
    assert bool((totals == 67108864).all())
    bounds = manifest["bounds"]
    assert {"288/8/4/32", "288/8/18/144"} <= set(bounds), "the shipped bounds cover every scenario"
    for policy in ("global", "hierarchical"):
        assert all(None not in row for row in bounds["288/8/4/32"][policy]["lower_bound"])


@pytest.mark.skipif(not SOURCE.is_dir(), reason="the published source files are not on this machine")
def test_the_real_dataset_holds_the_published_counts():
    dataset = load_dataset(NAME)
    for index, workload in enumerate(WORKLOADS):
        published = np.array(json.loads((SOURCE / f"{workload.name}.json").read_text())["logical_count"])
        assert np.array_equal(dataset.windows[index].numpy(), published[3:])
        assert dataset.meta["workloads"][index]["source_file"] == f"{workload.name}.json"


# ---------------------------------------------------------------- export


def test_export_round_trips_through_the_loader_and_the_validator(tmp_path, capsys, monkeypatch):
    out = tmp_path / "placement.json"
    code, stdout, _ = run_cli(capsys, "export", "--algorithm", "fast", "--dataset", NAME, "--workload",
                              "prefill_in1024", "--replicas", "288", "--groups", "8", "--nodes", "4", "--gpus", "32",
                              "--format", "sglang", "--out", str(out))
    assert code == 0 and "--ep-num-redundant-experts 32" in stdout
    assert set(json.loads(out.read_text())) == {"physical_to_logical_map"}, "SGLang passes every key to its loader"
    mapping = sglang_placement(out)
    assert mapping.shape == (61, 288)
    assert (mapping[:3] == np.arange(288) % 256).all(), "dense layers get SGLang's trivial map"
    placement = placement_of(torch.from_numpy(mapping[3:]), 256)
    validate_placement(*placement, num_logical=256, num_replicas=288, num_gpus=32)
    dataset = load_dataset(NAME)
    weight = dataset.windows[1]
    expected = get_algorithm("fast")(weight.clone(), 288, 8, 4, 32)[0]
    assert torch.equal(placement.phy2log, expected)
    monkeypatch.setenv("EPLB_BENCH_DATA", str(tmp_path / "data"))
    counts = tmp_path / "placement.logical_count.json"
    assert run_cli(capsys, "datasets", "import", str(counts), "--name", "again", "--groups", "8")[0] == 0
    again = load_dataset("again")
    assert torch.equal(again.windows[0], weight) and again.meta["source_layers"]["dropped"] == [0, 1, 2]


def test_export_refuses_what_it_cannot_do(tmp_path, capsys):
    out = str(tmp_path / "p.json")
    cases = [
        (["--dataset", NAME], "name one with --workload"),
        (["--dataset", NAME, "--workload", "prefill_in9"], "has no workload 'prefill_in9'"),
        (["--dataset", "mixtral-8x7b", "--workload", "a"], "is a load history"),
        (["--dataset", "mixtral-8x7b", "--window", "12"], "has windows 0..11"),
        (["--dataset", NAME, "--workload", "prefill_in512", "--format", "vllm"], "invalid choice"),
        (["--dataset", NAME, "--workload", "prefill_in512", "--replicas", "250", "--gpus", "32"], "fewer than the 256 logical experts"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(capsys, "export", "--algorithm", "fast", "--out", out, *extra)
        assert code == 2 and message in err, (extra, err)
    program = tmp_path / "broken.py"
    program.write_text("def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"
                       "    raise ValueError('nope')\n")
    code, _, err = run_cli(capsys, "export", "--algorithm", str(program), "--dataset", "mixtral-8x7b", "--out", out)
    assert code == 1 and "ValueError: nope" in err and not Path(out).exists()
    code, _, _ = run_cli(capsys, "export", "--algorithm", "fast", "--dataset", "mixtral-8x7b", "--window", "3",
                         "--out", out)
    assert code == 0 and sglang_placement(Path(out)).shape == (32, 16)


def test_job_records_name_every_pair_before_anything_runs():
    dataset = two_workloads()
    records = job_records(Job(AlgorithmInfo("x", None), dataset, Scenario(4, 1, 1, 2)))
    assert [(r.plan_workload, r.serve_workload) for r in records] == [("A", "A"), ("B", "B"), ("A", "B"), ("B", "A")]


def test_an_isolated_program_scores_every_pair_as_it_does_in_process():
    from eplb_bench.core.registry import file_algorithm_info
    from eplb_bench.evaluation.evaluate import evaluate_program

    greedy = Path(__file__).with_name("programs") / "greedy.py"
    dataset, scenario = two_workloads(), Scenario(4, 1, 1, 2)
    isolated = list(evaluate_program(greedy, [(dataset, scenario)], timeout=60, isolation="process"))
    local = run_records(Job(file_algorithm_info(greedy), dataset, scenario))
    assert [(r.plan_workload, r.serve_workload) for r in isolated] == [("A", "A"), ("B", "B"), ("A", "B"), ("B", "A")]
    for record, expected in zip(isolated, local):
        assert record.status == expected.status == "ok" and record.isolation == "process"
        assert record.balancedness_gpu == expected.balancedness_gpu
        assert record.balancedness_gpu_insample == expected.balancedness_gpu_insample


HANGS_ON_B = '''
import time
import torch


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    if weight.tolist() == [[200, 200, 200, 300]]:
        time.sleep(60)
    phy2log = torch.arange(num_replicas).repeat(weight.shape[0], 1) % weight.shape[1]
    logcnt = torch.zeros(weight.shape, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    log2phy = torch.full((*weight.shape, int(logcnt.max())), -1, dtype=torch.int64)
    for layer in range(weight.shape[0]):
        for slot, expert in enumerate(phy2log[layer].tolist()):
            free = (log2phy[layer, expert] == -1).nonzero()[0, 0]
            log2phy[layer, expert, free] = slot
    return phy2log, log2phy, logcnt
'''


def test_a_child_that_times_out_on_one_workload_is_replaced_for_the_next(tmp_path):
    from eplb_bench.evaluation.evaluate import evaluate_program

    program = tmp_path / "hangs_on_b.py"
    program.write_text(HANGS_ON_B)
    windows = torch.tensor([[[400, 200, 100, 100]], [[200, 200, 200, 300]], [[100, 100, 100, 500]]])
    dataset = Dataset(name="three", windows=windows, num_groups=1, scenarios=[Scenario(4, 1, 1, 2)],
                      window_steps=None, meta={"protocol": CROSS_WORKLOAD, "pairs": [["B", "C"], ["C", "B"]],
                                               "workloads": [{"name": "A"}, {"name": "B"}, {"name": "C"}]})
    records = list(evaluate_program(program, [(dataset, Scenario(4, 1, 1, 2))], timeout=3, isolation="process"))
    statuses = {(r.plan_workload, r.serve_workload): r.status for r in records}
    assert statuses == {("A", "A"): "ok", ("B", "B"): "timeout", ("C", "C"): "ok", ("B", "C"): "timeout",
                        ("C", "B"): "ok"}


@pytest.mark.parametrize(
    "change, message",
    [({"source_layers": {"count": "x", "dropped": []}}, "source_layers.count"),
     ({"source_layers": {"dropped": [0]}}, "source_layers.count"),
     ({"source_layers": {"count": 5, "dropped": None}}, "source_layers.dropped"),
     ({"source_layers": {"count": 5, "dropped": [True]}}, "source_layers.dropped"),
     ({"source_layers": {"count": 6, "dropped": [0, 0]}}, "source_layers.dropped"),
     ({"source_layers": {"count": 5, "dropped": [9]}}, "source_layers.dropped"),
     ({"source_layers": {"count": 5, "dropped": [1]}}, "do not match the data's 1 layers"),
     ({"routing": {"top_k": 1, "num_groups": 2, "topk_groups": 2}}, "impossible routing"),
     ({"routing": {"top_k": 3, "num_groups": 1, "topk_groups": 1}}, "impossible routing"),
     ({"workloads": [{"name": "a|b"}, {"name": "b"}], "pairs": []}, "invalid workload name"),
     ({"pairs": [["a", "b"], ["a", "b"]]}, "a pair is named twice")],
)
def test_manifests_that_would_mislead_export_or_scoring_are_refused(tmp_path, change, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(changed_collection(tmp_path, change))


def test_workload_names_and_pairs_are_checked_at_import(tmp_path):
    odd = location_file(tmp_path / "c:d.json", [[1, 2]])
    plain = location_file(tmp_path / "plain.json", [[2, 1]])
    with pytest.raises(DatasetError, match="named by its file's stem"):
        import_dataset([odd, plain], "odd", directory=tmp_path)
    other = location_file(tmp_path / "other.json", [[3, 1]])
    with pytest.raises(DatasetError, match="named twice"):
        import_dataset([plain, other], "twice", directory=tmp_path, pairs=[("plain", "other"), ("plain", "other")])
    with pytest.raises(DatasetError, match="every count is zero"):
        import_dataset([plain, location_file(tmp_path / "zero.json", [[0, 0]])], "zeros", directory=tmp_path / "d")


def test_records_cannot_claim_what_the_cross_workload_protocol_does_not_measure():
    base = {"algorithm": "a", "dataset": "d", "status": "ok", "protocol": CROSS_WORKLOAD,
            "plan_workload": "A", "serve_workload": "B"}
    for bad in ({"migrated_replicas": 3.0}, {"windows_scored": 11}, {"predictor": "ema:0.5"},
                {"plan_workload": ""}, {"balancedness_gpu": 7.0}, {"internode_share": 1.5}):
        with pytest.raises(RecordError):
            Record.from_dict({**base, **bad})
    Record.from_dict({**base, "balancedness_gpu": 1.0 + 1e-12})   # an ulp past 1 is rounding


def test_export_writes_both_files_or_neither(tmp_path, capsys):
    for out, message in (("", "--out must name a file"), (".", "--out must name a file"),
                         (str(tmp_path), "--out must name a file")):
        code, _, err = run_cli(capsys, "export", "--algorithm", "fast", "--dataset", "mixtral-8x7b", "--out", out)
        assert code == 2 and message in err
    (tmp_path / "p.logical_count.json").mkdir()
    code, _, err = run_cli(capsys, "export", "--algorithm", "fast", "--dataset", "mixtral-8x7b",
                           "--out", str(tmp_path / "p.json"))
    assert code == 2 and "is a directory" in err and not (tmp_path / "p.json").exists()
    code, _, err = run_cli(capsys, "export", "--algorithm", "fast", "--dataset", NAME, "--window", "1",
                           "--out", str(tmp_path / "q.json"))
    assert code == 2 and "name one with --workload" in err
