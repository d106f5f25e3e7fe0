"""The runner: protocol, statuses, mutation detection, timing and scores."""

import pytest
import torch

from eplb_bench import Scenario, get_algorithm
from eplb_bench.datasets import Dataset
from eplb_bench.registry import AlgorithmInfo
from eplb_bench.runner import Job, run_job, run_jobs
from eplb_bench.scoring import all_scores
from eplb_bench.simulate import internode_share, placement_metrics

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
    next_gpu, insample_gpu, shares = [], [], []
    for i in range(3):
        phy2log, _, logcnt = deepseek(dataset.windows[i], 12, 4, 2, 4)
        next_gpu.append(placement_metrics(dataset.windows[i + 1], phy2log, logcnt, 4, 2)["balancedness_gpu"])
        insample_gpu.append(placement_metrics(dataset.windows[i], phy2log, logcnt, 4, 2)["balancedness_gpu"])
        shares.append(internode_share(dataset.windows[i + 1], phy2log, 2))
    assert record["balancedness_gpu"] == pytest.approx(sum(next_gpu) / 3)
    assert record["balancedness_gpu_insample"] == pytest.approx(sum(insample_gpu) / 3)
    assert record["internode_share"] == pytest.approx(sum(shares) / 3)
    assert record["runtime_ms"] > 0
    assert record["scores"] == pytest.approx(all_scores(record, record["runtime_ms"] / 1e3))
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
    from eplb_bench.datasets import parse_predictor, predicted_windows

    seen = []

    def recording(weight, *args):
        seen.append(weight.clone())
        return get_algorithm("deepseek")(weight, *args)

    dataset = small_dataset()
    predictor = parse_predictor("ema:0.5")
    record = run_job(Job(info("recording", recording), dataset, SCENARIO, predictor=predictor))
    expected = predicted_windows(dataset.windows, predictor)
    # warm-up on e_0, then one plan on e_i for each window pair
    assert [w.tolist() for w in seen] == [expected[i].tolist() for i in (0, 0, 1, 2)]
    next_gpu = []
    for i in range(3):
        phy2log, _, logcnt = get_algorithm("deepseek")(expected[i], 12, 4, 2, 4)
        next_gpu.append(placement_metrics(dataset.windows[i + 1], phy2log, logcnt, 4, 2)["balancedness_gpu"])
    assert record["predictor"] == "ema:0.5"
    assert record["balancedness_gpu"] == pytest.approx(sum(next_gpu) / 3)
