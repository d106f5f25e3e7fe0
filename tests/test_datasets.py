"""Shipped data, the vLLM/ADRS JSON and .npz loaders, and their error paths."""

import json
import re

import numpy as np
import pytest
import torch

from eplb_bench import load_dataset
from eplb_bench.datasets import DatasetError, datasets_dir, sha256_of, shipped_names
from eplb_bench.synthetic import write_default_dataset


def test_default_dataset_ships_with_its_scenarios():
    assert "mini-v2-lite" in shipped_names()
    data = load_dataset("mini-v2-lite")
    assert data.name == "mini-v2-lite"
    assert tuple(data.windows.shape) == (13, 26, 64)
    assert data.windows.dtype == torch.int64 and (data.windows >= 0).all()
    assert data.num_groups == 8
    assert [s.as_dict() for s in data.scenarios][0] == {"num_replicas": 288, "num_groups": 8, "num_nodes": 4, "num_gpus": 32}
    # each window sums 100 steps of 4096 tokens routed to 6 experts, in every layer
    assert (data.windows.sum(-1) == 100 * 4096 * 6).all()


def test_shipped_file_matches_manifest_and_regenerates(tmp_path):
    manifest = json.loads((datasets_dir() / "mini-v2-lite.json").read_text())
    assert sha256_of(datasets_dir() / manifest["file"]) == manifest["sha256"]
    assert write_default_dataset(tmp_path)["sha256"] == manifest["sha256"]


def write_history(path, steps):
    path.write_text(json.dumps({"load_history": [{"logical_expert_load": s.tolist()} for s in steps]}))


def test_vllm_json_is_summed_into_windows(tmp_path):
    steps = np.arange(250 * 2 * 8).reshape(250, 2, 8) % 13
    path = tmp_path / "expert-load.json"
    write_history(path, steps)
    data = load_dataset(path)
    assert data.name == "expert-load"
    assert data.windows.dtype == torch.int64
    expected = steps[:200].reshape(2, 100, 2, 8).sum(1)  # the partial third window is dropped
    assert data.windows.tolist() == expected.tolist()
    assert data.scenarios[0].as_dict() == {"num_replicas": 288, "num_groups": 8, "num_nodes": 4, "num_gpus": 32}


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
        ("bad.json", "{not json", "not valid JSON"),
        ("nokey.json", json.dumps({"steps": []}), 'expected an object with a non-empty "load_history" list'),
        ("short.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 150}), "make 1 window(s)"),
        ("ragged.json", json.dumps({"load_history": [{"logical_expert_load": [[1, 2]]}] * 100
                                    + [{"logical_expert_load": [[1, 2, 3]]}] * 100}), "step 100 has shape (1, 3)"),
        ("flat.json", json.dumps({"load_history": [{"logical_expert_load": [1, 2]}] * 200}), "expected [layers, experts]"),
        ("text.json", json.dumps({"load_history": [{"logical_expert_load": [["a", "b"]]}] * 200}), "malformed logical_expert_load"),
        ("data.csv", "1,2,3", "unknown dataset format '.csv'"),
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
