"""The runner: protocol, statuses, mutation detection, timing and scores."""

import pytest
import torch

from eplb_bench import Scenario, get_algorithm
from eplb_bench.data.dataset import Dataset
from eplb_bench.core.registry import AlgorithmInfo
from eplb_bench.evaluation.runner import Job, run_job, run_jobs
from eplb_bench.core.simulate import internode_share, placement_metrics

SCENARIO = Scenario(num_replicas=12, num_groups=4, num_nodes=2, num_gpus=4)


def small_dataset():
    generator = torch.Generator().manual_seed(7)
    windows = torch.randint(0, 50, (4, 3, 8), generator=generator)
    return Dataset(name="unit", windows=windows, num_groups=4, scenarios=[SCENARIO])


def info(name, function):
    return AlgorithmInfo(name=name, function=function)


def test_ok_record_matches_direct_computation():
    dataset = small_dataset()
    deepseek = get_algorithm("deepseek")
    record = run_job(Job(info("deepseek", deepseek), dataset, SCENARIO), repeat=2)
    assert record["status"] == "ok" and record["error"] is None
    assert record["windows_scored"] == 3
    expected = {key: 0.0 for key in ("gpu", "gpu_in", "slot", "slot_in", "node", "share")}
    for i in range(3):
        phy2log, _, logcnt = deepseek(dataset.windows[i], 12, 4, 2, 4)
        upcoming = placement_metrics(dataset.windows[i + 1], phy2log, logcnt, 4, 2)
        current = placement_metrics(dataset.windows[i], phy2log, logcnt, 4, 2)
        expected["gpu"] += upcoming["balancedness_gpu"] / 3
        expected["slot"] += upcoming["balancedness_slot"] / 3
        expected["node"] += upcoming["balancedness_node"] / 3
        expected["gpu_in"] += current["balancedness_gpu"] / 3
        expected["slot_in"] += current["balancedness_slot"] / 3
        expected["share"] += internode_share(dataset.windows[i + 1], phy2log, logcnt, 2) / 3
    assert record["balancedness_gpu"] == pytest.approx(expected["gpu"])
    assert record["balancedness_slot"] == pytest.approx(expected["slot"])
    assert record["balancedness_node"] == pytest.approx(expected["node"])
    assert record["balancedness_gpu_insample"] == pytest.approx(expected["gpu_in"])
    assert record["balancedness_slot_insample"] == pytest.approx(expected["slot_in"])
    assert record["internode_share"] == pytest.approx(expected["share"])
    assert expected["slot"] != pytest.approx(expected["slot_in"])  # the two protocols differ here
    assert record["runtime_ms"] > 0
    seconds = record["runtime_ms"] / 1e3
    assert record["scores"]["adrs"] == pytest.approx((expected["slot"] + 0.02 / seconds) / 2)
    assert record["scores"]["skydiscover"] == pytest.approx((expected["slot"] + 0.002 / seconds) / 2)
    penalty = min(20 * seconds, 20) if seconds > 0.010 else 0
    assert record["scores"]["adrs_leaderboard"] == pytest.approx(
        90 * expected["gpu"] + 5 * min(0.002 / seconds, 2) - penalty)
    assert record["policy"] == "hierarchical" and record["device"] == "cpu"


def test_raising_balancer_is_an_error_and_the_run_goes_on():
    def raises(*args):
        raise ZeroDivisionError("no luck\nsecond line")

    jobs = [Job(info("raises", raises), small_dataset(), SCENARIO),
            Job(info("deepseek", get_algorithm("deepseek")), small_dataset(), SCENARIO)]
    records = list(run_jobs(jobs))
    assert records[0]["status"] == "error"
    assert records[0]["error"] == "warm-up: ZeroDivisionError: no luck second line"
    assert records[0]["scores"] is None and records[0]["balancedness_gpu"] is None
    assert records[1]["status"] == "ok"


def test_balancer_failing_on_a_later_window_names_it():
    calls = []

    def flaky(weight, *args):
        calls.append(1)
        if len(calls) > 2:
            raise ValueError("window trouble")
        return get_algorithm("deepseek")(weight, *args)

    record = run_job(Job(info("flaky", flaky), small_dataset(), SCENARIO))
    assert record["status"] == "error" and record["error"] == "window 1: ValueError: window trouble"


def test_invalid_placement_is_recorded_not_scored():
    def duplicates(weight, *args):
        phy2log, log2phy, logcnt = get_algorithm("deepseek")(weight, *args)
        log2phy = log2phy.clone()
        expert = int(logcnt[0].argmax())
        log2phy[0, expert, 1] = log2phy[0, expert, 0]
        return phy2log, log2phy, logcnt

    record = run_job(Job(info("dup", duplicates), small_dataset(), SCENARIO))
    assert record["status"] == "invalid"
    assert "listed 2 times in log2phy (duplicate slot)" in record["error"]
    assert record["scores"] is None


def test_garbage_output_is_invalid():
    record = run_job(Job(info("garbage", lambda *args: "nonsense"), small_dataset(), SCENARIO))
    assert record["status"] == "invalid"
    assert record["error"] == "window 0: balancer returned str, expected a tuple (phy2log, log2phy, logcnt)"


def test_mutating_balancer_is_invalid():
    def mutates(weight, *args):
        result = get_algorithm("deepseek")(weight, *args)
        weight.zero_()
        return result

    record = run_job(Job(info("mutates", mutates), small_dataset(), SCENARIO))
    assert record["status"] == "invalid"
    assert record["error"] == "window 0: balancer modified its input weight"


def test_float_windows_are_accepted():
    dataset = small_dataset()
    dataset.windows = dataset.windows.double() / 3
    record = run_job(Job(info("seed", get_algorithm("seed")), dataset, SCENARIO))
    assert record["status"] == "ok"


def test_cuda_run_synchronizes_and_scores():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    record = run_job(Job(info("deepseek", get_algorithm("deepseek")), small_dataset(), SCENARIO, "cuda"))
    cpu = run_job(Job(info("deepseek", get_algorithm("deepseek")), small_dataset(), SCENARIO, "cpu"))
    assert record["status"] == "ok"
    assert record["balancedness_gpu"] == pytest.approx(cpu["balancedness_gpu"])


def test_ema_predictor_feeds_the_balancer_and_scores_on_real_windows():
    from eplb_bench.data.predictors import parse_predictor, predicted_windows

    seen = []

    def recording(weight, *args):
        seen.append(weight.clone())
        return get_algorithm("deepseek")(weight, *args)

    dataset = small_dataset()
    predictor = parse_predictor("ema:0.5")
    record = run_job(Job(info("recording", recording), dataset, SCENARIO, predictor=predictor))
    expected = predicted_windows(dataset.windows, predictor)
    # warm-up on a stand-in of e_0, then one plan on e_i for each window pair
    assert seen[0].shape == expected[0].shape and all(not torch.equal(seen[0], w) for w in expected)
    assert [w.tolist() for w in seen[1:]] == [expected[i].tolist() for i in (0, 1, 2)]
    next_gpu = []
    for i in range(3):
        phy2log, _, logcnt = get_algorithm("deepseek")(expected[i], 12, 4, 2, 4)
        next_gpu.append(placement_metrics(dataset.windows[i + 1], phy2log, logcnt, 4, 2)["balancedness_gpu"])
    assert record["predictor"] == "ema:0.5"
    assert record["balancedness_gpu"] == pytest.approx(sum(next_gpu) / 3)


class FakeClock:
    """Stands in for time.perf_counter; balancers advance it by what they 'take'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_runtime_is_the_median_of_timed_calls_without_the_warm_up(monkeypatch):
    import eplb_bench.evaluation.runner as runner

    clock = FakeClock()
    monkeypatch.setattr(runner.time, "perf_counter", clock)
    durations = iter([5.0, 0.001, 0.001, 0.010])  # warm-up, then windows 0, 1, 2

    def slow_sometimes(weight, *args):
        clock.now += next(durations)
        return get_algorithm("deepseek")(weight, *args)

    record = run_job(Job(info("timed", slow_sometimes), small_dataset(), SCENARIO))
    assert record["runtime_ms"] == pytest.approx(1.0)  # median, not the mean of 4 ms
    assert (record["runtime_ms_min"], record["runtime_ms_max"]) == pytest.approx((1.0, 10.0))


def test_repeats_cannot_be_served_from_a_cache():
    answers = {}
    inputs = []

    def caching(weight, *args):
        inputs.append(weight.clone())
        key = tuple(weight.flatten().tolist())
        if key not in answers:
            answers[key] = get_algorithm("deepseek")(weight, *args)
        return answers[key]

    run_job(Job(info("caching", caching), small_dataset(), SCENARIO), repeat=3)
    keys = [tuple(w.flatten().tolist()) for w in inputs]
    assert len(keys) == 1 + 3 * 3 and len(set(keys)) == len(keys)  # every call saw a new input


def test_mutation_on_a_later_repeat_is_caught():
    calls = []

    def mutates_second_call(weight, *args):
        calls.append(1)
        result = get_algorithm("deepseek")(weight, *args)
        if len(calls) == 3:  # warm-up, first call, then the repeat
            weight.add_(1)
        return result

    record = run_job(Job(info("late", mutates_second_call), small_dataset(), SCENARIO), repeat=2)
    assert record["status"] == "invalid" and "modified its input" in record["error"]


def test_scored_placement_cannot_be_changed_after_validation():
    kept = []

    def aliasing(weight, *args):
        phy2log, log2phy, logcnt = get_algorithm("deepseek")(weight, *args)
        if kept:
            kept[-1].fill_(1)  # rewrite the previous call's logcnt in place
        kept.append(logcnt)
        return phy2log, log2phy, logcnt

    honest = run_job(Job(info("deepseek", get_algorithm("deepseek")), small_dataset(), SCENARIO))
    record = run_job(Job(info("aliasing", aliasing), small_dataset(), SCENARIO), repeat=2)
    assert record["status"] == "ok"
    assert record["balancedness_slot"] == pytest.approx(honest["balancedness_slot"])


def test_previous_placement_is_passed_and_migrations_are_counted():
    dataset = small_dataset()
    deepseek = get_algorithm("deepseek")
    seen = []

    def aware(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None):
        seen.append(None if prev_phy2log is None else prev_phy2log.clone())
        return deepseek(weight, num_replicas, num_groups, num_nodes, num_gpus)

    from eplb_bench.core.registry import _keyword_names
    algorithm = AlgorithmInfo(name="aware", function=aware, accepts=_keyword_names(aware))
    record = run_job(Job(algorithm, dataset, SCENARIO))
    placements = [deepseek(dataset.windows[i], 12, 4, 2, 4)[0] for i in range(3)]
    # Warm-up and window 0 get nothing; window i gets window i - 1's placement.
    assert seen[0] is None and seen[1] is None
    assert torch.equal(seen[2], placements[0]) and torch.equal(seen[3], placements[1])
    moved = [int((placements[i] != placements[i - 1]).sum()) for i in (1, 2)]
    assert record["migrated_replicas"] == pytest.approx(sum(moved) / 2)
    assert record["prev_placement"] == "passed"

    seen.clear()
    record = run_job(Job(algorithm, dataset, SCENARIO, migration=False))
    assert all(previous is None for previous in seen) and record["prev_placement"] == "off"
    assert record["migrated_replicas"] == pytest.approx(sum(moved) / 2)


def test_repeats_get_the_previous_placement_renumbered_with_the_experts():
    dataset = small_dataset()
    deepseek = get_algorithm("deepseek")
    calls = []

    def aware(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None):
        calls.append((weight.clone(), None if prev_phy2log is None else prev_phy2log.clone()))
        return deepseek(weight, num_replicas, num_groups, num_nodes, num_gpus)

    algorithm = AlgorithmInfo(name="aware", function=aware, accepts=frozenset({"prev_phy2log"}))
    run_job(Job(algorithm, dataset, SCENARIO), repeat=2)
    first, repeat = calls[3], calls[4]  # window 1: the call that is scored, then its repeat
    assert not torch.equal(repeat[0], first[0])
    for layer in range(first[1].shape[0]):   # the same placement, its experts renamed
        counts = lambda ids: sorted(torch.bincount(ids, minlength=8).tolist())
        assert counts(repeat[1][layer]) == counts(first[1][layer])


def test_stand_ins_are_scaled_permutations_and_previous_placements_follow_them():
    from eplb_bench.evaluation.runner import DISGUISE_SIGMA, disguised, renumbered

    weight = torch.randint(100, 1000, (3, 8), generator=torch.Generator().manual_seed(1))
    stand_in, order = disguised(weight, torch.Generator().manual_seed(2))
    assert stand_in.dtype == weight.dtype and sorted(order[0].tolist()) == list(range(8))
    ratio = stand_in.double() / weight.gather(1, order).double()
    assert bool(((ratio > torch.exp(torch.tensor(-6 * DISGUISE_SIGMA))) & (ratio < torch.exp(torch.tensor(6 * DISGUISE_SIGMA)))).all())
    previous = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 7, 7]] * 3)
    moved = renumbered(previous, order)
    assert torch.equal(order.gather(1, moved), previous)   # stand-in expert moved[l, s] is window expert previous[l, s]


def test_no_cache_keyed_on_sorted_loads_serves_a_warm_up_or_a_repeat():
    # A program can undo a rotation or a reversal, or key its cache on each layer's sorted
    # loads (which any permutation keeps); the stand-ins' scaled loads defeat both.
    keys = []

    def canonical(weight, *args):
        keys.append(tuple(tuple(sorted(row)) for row in weight.tolist()))
        return get_algorithm("deepseek")(weight, *args)

    run_job(Job(info("canonical", canonical), small_dataset(), SCENARIO), repeat=3)
    assert len(keys) == 1 + 3 * 3 and len(set(keys)) == len(keys)


def test_records_say_where_a_balancer_computes():
    from eplb_bench.core.registry import algorithm_info
    from eplb_bench.evaluation.runner import computed_on

    dataset = small_dataset()
    on_cuda = lambda name: computed_on(Job(algorithm_info(name), dataset, SCENARIO, device="cuda"))
    assert on_cuda("fast") == "cuda"
    for name in ("deepseek", "seed", "refined_packing", "hybrid_replication"):
        assert on_cuda(name) == "cpu (input moved from cuda and back)"
    assert computed_on(Job(algorithm_info("deepseek"), dataset, SCENARIO)) == "cpu"


def test_every_balancer_runs_on_cuda_input():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from eplb_bench import list_algorithms
    from eplb_bench.core.registry import algorithm_info

    dataset = small_dataset()
    for name in list_algorithms(include_slow=False):
        record = run_job(Job(algorithm_info(name), dataset, SCENARIO, device="cuda"))
        assert record["status"] == "ok", (name, record["error"])
        assert record["device"] == "cuda"
