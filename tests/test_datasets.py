"""Shipped data, the vLLM/ADRS JSON and .npz loaders, and their error paths."""

import json
import re

import numpy as np
import pytest
import torch

from eplb_bench import load_dataset
import eplb_bench.data.formats as formats_module
from eplb_bench import Scenario, ScenarioError
from eplb_bench.data.dataset import DatasetError
from eplb_bench.data.predictors import Predictor, parse_predictor, predicted_windows
from eplb_bench.data.catalog import import_dataset
from eplb_bench.data.manifests import verify_manifest


def write_history(path, steps):
    # Extra fields around the loads, as real histories have, must be skipped, also when they
    # hold the key's name, brackets, nested objects with their own "logical_expert_load".
    path.write_text(json.dumps({"fields": ["logical_expert_load"], "model": "m [x] \"q\"", "load_history": [
        {"step": i, "stats": {"logical_expert_load": [[0]]}, "logical_expert_load": s.tolist(), "note": "a } b"}
        for i, s in enumerate(steps)], "config": {"ranks": [0, 1]}}))


@pytest.mark.parametrize("read_chars", [7, 100, 1 << 22])
def test_vllm_json_is_summed_into_windows(tmp_path, monkeypatch, read_chars):
    # Tiny read sizes split keys and numbers across buffer refills.
    monkeypatch.setattr(formats_module, "READ_CHARS", read_chars)
    steps = np.arange(250 * 2 * 8).reshape(250, 2, 8) % 13
    path = tmp_path / "expert-load.json"
    write_history(path, steps)
    data = load_dataset(path)
    assert data.name == "expert-load"
    assert data.windows.dtype == torch.int64
    expected = steps[:200].reshape(2, 100, 2, 8).sum(1)  # the partial third window is dropped
    assert data.windows.tolist() == expected.tolist()
    assert data.scenarios[0].as_dict() == {"num_replicas": 288, "num_groups": 8, "num_nodes": 4, "num_gpus": 32}
    assert data.num_groups == 8  # the public evaluators' groups, the same as the scenario's


def test_vllm_json_window_steps(tmp_path):
    steps = np.ones((30, 2, 8))
    write_history(tmp_path / "h.json", steps)
    data = load_dataset(tmp_path / "h.json", window_steps=10)
    assert tuple(data.windows.shape) == (3, 2, 8) and int(data.windows[0, 0, 0]) == 10


def test_sglang_dump(tmp_path):
    counts = torch.randint(0, 50, (250, 3, 16))
    torch.save({"rank": 0, "logical_count": counts}, tmp_path / "dump.pt")
    data = load_dataset(tmp_path / "dump.pt")
    assert data.windows.tolist() == counts[:200].view(2, 100, 3, 16).sum(1).tolist()
    assert data.meta["format"] == "sglang-dump"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"other": torch.zeros(3)}, "expected a dict with a 'logical_count' tensor"),
        ({"logical_count": torch.zeros(4, 4, 4, 4)}, "expected [steps, layers, experts]"),
        ({"logical_count": -torch.ones(300, 2, 4)}, "NaN, infinite or negative"),
    ],
)
def test_bad_sglang_dumps(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(tmp_path / "bad.pt")


def test_sglang_dump_that_is_not_a_torch_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="not a readable torch file"):
        load_dataset(tmp_path / "junk.pt")


def test_npz_windows_and_steps(tmp_path):
    windows = np.random.default_rng(0).integers(0, 9, size=(3, 2, 16))
    np.savez(tmp_path / "w.npz", windows=windows, num_groups=4)
    data = load_dataset(tmp_path / "w.npz")
    assert data.windows.tolist() == windows.tolist() and data.num_groups == 4
    assert data.scenarios[0].num_groups == 4
    steps = np.ones((40, 2, 16))
    np.savez(tmp_path / "s.npz", steps=steps, window_steps=10)
    data = load_dataset(tmp_path / "s.npz")
    assert tuple(data.windows.shape) == (4, 2, 16) and float(data.windows[0, 0, 0]) == 10.0


def test_shape_without_public_scenario_has_none(tmp_path):
    np.savez(tmp_path / "odd.npz", windows=np.ones((2, 1, 300)))  # more experts than 288 slots
    assert load_dataset(tmp_path / "odd.npz").scenarios == []


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", "not json", "not valid JSON (the document: expected {, found 'n')"),
        ("empty.json", "", "not valid JSON (the document: expected {, found the end of the file)"),
        ("nokey.json", json.dumps({"steps": []}), 'expected an object with a non-empty "load_history" list'),
        ("nosteps.json", json.dumps({"load_history": []}), '"load_history" is empty'),
        ("short.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 150}), "make 1 window(s)"),
        ("ragged.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 100
                                    + [{"logical_expert_load": [[1, 2, 3]]}] * 100}), "step 100 has shape (1, 3)"),
        ("flat.json", json.dumps({"load_history": [{"logical_expert_load": [1, 2]}] * 200}), "expected [layers, experts]"),
        ("text.json", json.dumps({"load_history": [{"logical_expert_load": [["a", "b"]]}] * 200}), "malformed logical_expert_load"),
        ("neg.json", json.dumps({"load_history": [{"logical_expert_load": [[1, -2]]}] * 200}), "step 0 has NaN, infinite or negative"),
        ("cut.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 200})[:-5],
         "not valid JSON (step 199: the file ends inside it)"),
        ("tail.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 200})[:-2], '("load_history": expected , or ], found the end of the file)'),
        ("partial.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 200})[:-30], "not valid JSON (step 199: the file ends inside it)"),
        ("syntax.json", '{"load_history": [{"logical_expert_load": [[1, 2],, [3]]}]}', "not valid JSON (step 0: Expecting value)"),
        ("data.csv", "1,2,3", "unknown dataset format '.csv'"),
        ("array.json", "[1, 2]", "the document: expected {, found '['"),
        ("nested.json", json.dumps({"data": {"load_history": [{"logical_expert_load": [[1]]}] * 200}}),
         'expected an object with a non-empty "load_history" list'),
        ("notlist.json", json.dumps({"load_history": {"logical_expert_load": [[1]]}}), "expected [, found '{'"),
        ("trailing.json", json.dumps({"load_history": [{"logical_expert_load": [[1]]}] * 200}) + " {}",
         "data after the document"),
        ("nokeystep.json", json.dumps({"load_history": [{"stats": [[1]]}] * 200}), "step 0 has no logical_expert_load"),
        ("huge.json", json.dumps({"load_history": [{"logical_expert_load": [[10**400, 1]]}] * 200}),
         "step 0 has a malformed logical_expert_load"),
        ("deep.json", '{"load_history": [' + "[" * 100000 + "]" * 100000 + "]}", "nested too deeply"),
        ("comma.json", '{"load_history": [{"logical_expert_load": [[1]]}],}', "a key: Expecting value"),
    ],
)
def test_malformed_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(path)


@pytest.mark.parametrize(
    "windows, message",
    [
        (np.full((3, 2, 4), np.nan), "NaN or infinite"),
        (-np.ones((3, 2, 4)), "negative values"),
        (np.ones((1, 2, 4)), "only 1 window"),
        (np.ones((3, 8)), "expected [windows, layers, experts]"),
        (np.full((3, 1, 2), "a"), "expected numbers"),
    ],
)
def test_bad_loads(tmp_path, windows, message):
    np.savez(tmp_path / "bad.npz", windows=windows)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(tmp_path / "bad.npz")


def test_npz_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        load_dataset(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", loads=np.ones((3, 2, 2)))
    with pytest.raises(DatasetError, match="expected an array named 'windows' or 'steps'"):
        load_dataset(tmp_path / "other.npz")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"windows": np.ones((3, 2, 8)), "num_groups": np.array([2, 4])}, "num_groups must be one positive integer"),
        ({"windows": np.ones((3, 2, 8)), "num_groups": 0}, "num_groups must be one positive integer"),
        ({"steps": np.ones((30, 2, 8)), "window_steps": 0}, "window_steps must be one positive integer"),
        ({"steps": np.ones((30, 2, 8)), "window_steps": -10}, "window_steps must be one positive integer"),
        ({"windows": np.full((3, 2, 8), 2**64 - 1, dtype=np.uint64)}, "loads are too large"),
    ],
)
def test_bad_npz_metadata(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(tmp_path / "bad.npz")


def test_unknown_name():
    with pytest.raises(DatasetError, match="no dataset named 'nope' and no such file"):
        load_dataset("nope")


def test_manifest_errors(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"file": "absent.npz"}))
    with pytest.raises(DatasetError, match="data file absent.npz is missing"):
        load_dataset(tmp_path / "m.json")
    np.savez(tmp_path / "d.npz", windows=np.ones((3, 2, 8)))
    (tmp_path / "m.json").write_text(json.dumps({"file": "d.npz", "num_groups": 2,
                                                 "scenarios": [{"num_replicas": 10, "num_groups": 2, "num_nodes": 1, "num_gpus": 4}]}))
    with pytest.raises(DatasetError, match="not divisible by num_gpus=4"):
        load_dataset(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"file": "d.npz", "num_groups": 0}))
    with pytest.raises(DatasetError, match="num_groups must be one positive integer"):
        load_dataset(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({"file": "d.npz", "sha256": "0" * 64}))
    with pytest.raises(DatasetError, match="does not match the manifest's sha256"):
        load_dataset(tmp_path / "m.json")


def test_predictors():
    windows = torch.tensor([[[4.0, 0.0]], [[0.0, 4.0]], [[8.0, 8.0]]])
    assert predicted_windows(windows, parse_predictor("last")) is windows
    ema = predicted_windows(windows, parse_predictor("ema:0.5"))
    # e0 = w0; e1 = (w1 + e0) / 2 = [2, 2]; e2 = (w2 + e1) / 2 = [5, 5]
    assert ema.tolist() == [[[4.0, 0.0]], [[2.0, 2.0]], [[5.0, 5.0]]]
    assert predicted_windows(windows, parse_predictor("ema:1")).tolist() == windows.tolist()
    assert parse_predictor("ema:0.25") == Predictor("ema", 0.25) and parse_predictor("ema:0.25").label() == "ema:0.25"


@pytest.mark.parametrize("text", ["ema", "ema:0", "ema:1.5", "ema:x", "mean", ""])
def test_bad_predictors(text):
    with pytest.raises(ValueError, match="unknown predictor"):
        parse_predictor(text)


def test_import_writes_a_manifest_backed_dataset(tmp_path):
    steps = np.random.default_rng(1).integers(0, 20, size=(300, 2, 16))
    write_history(tmp_path / "trace.json", steps)
    target = tmp_path / "store"
    manifest = import_dataset(tmp_path / "trace.json", "trace", num_groups=4,
                              scenarios=[Scenario(24, 4, 2, 8)], directory=target)
    assert sorted(p.name for p in target.iterdir()) == ["trace.json", "trace.npz"]
    assert verify_manifest(target / "trace.json") is None
    assert manifest["num_windows"] == 3 and manifest["num_groups"] == 4
    assert manifest["statistics"]["contiguous_gpus"] == 8
    data = load_dataset(target / "trace.json")
    assert data.windows.tolist() == steps.reshape(3, 100, 2, 16).sum(1).tolist()
    assert data.scenarios == [Scenario(24, 4, 2, 8)]
    with pytest.raises(DatasetError, match="already exists"):
        import_dataset(tmp_path / "trace.json", "trace", directory=target)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "bad name"}, "invalid dataset name"),
        ({"num_groups": 3}, "do not divide into 3 groups"),
        ({"scenarios": [Scenario(20, 1, 1, 8)]}, "not divisible by num_gpus=8"),
        ({"window_steps": 0}, "window steps must be at least 1"),
    ],
)
def test_bad_imports_write_nothing(tmp_path, kwargs, message):
    write_history(tmp_path / "trace.json", np.ones((300, 2, 16)))
    target = tmp_path / "store"
    target.mkdir()
    arguments = {"name": "trace", "directory": target, **kwargs}
    with pytest.raises((DatasetError, ScenarioError), match=message):
        import_dataset(tmp_path / "trace.json", **arguments)
    assert list(target.iterdir()) == []


def test_malformed_import_writes_nothing(tmp_path):
    (tmp_path / "broken.json").write_text('{"load_history": [{"logical_expert_load": [[1, 2]')
    target = tmp_path / "store"
    target.mkdir()
    with pytest.raises(DatasetError, match="step 0: the file ends inside it"):
        import_dataset(tmp_path / "broken.json", "broken", directory=target)
    assert list(target.iterdir()) == []
