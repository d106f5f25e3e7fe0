"""register / list / get / load a file / entry points."""

from importlib import metadata

import pytest

from eplb_bench import RegistryError, get_algorithm, list_algorithms, load_algorithm_file, register
from eplb_bench.core import registry

GOOD_PROGRAM = '''
import torch

def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return "file-balancer"
'''


@pytest.fixture
def clean_registry(monkeypatch):
    """A registry copy that the test may change freely."""
    registry.discover()
    monkeypatch.setattr(registry, "_discovered", True)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BROKEN", dict(registry._BROKEN))
    monkeypatch.setattr(registry, "_CONFLICTS", {})
    return registry._REGISTRY


def test_register_list_get(clean_registry):
    @register("unit-test-balancer", description="does nothing")
    def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
        return None

    assert "unit-test-balancer" in list_algorithms()
    assert get_algorithm("unit-test-balancer") is rebalance_experts
    assert registry.algorithm_info("unit-test-balancer").description == "does nothing"


def test_duplicate_name_is_an_error(clean_registry):
    with pytest.raises(RegistryError, match=r"'deepseek' is registered more than once: .*algorithms/deepseek.py:\d+ "
                                            r"and .*test_registry.py:\d+"):
        register("deepseek")(lambda *args: None)


def test_invalid_name(clean_registry):
    with pytest.raises(RegistryError, match="invalid balancer name"):
        register("a,b")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(RegistryError, match=r"unknown balancer 'nope' \(registered: .*deepseek"):
        get_algorithm("nope")


def test_slow_balancers_are_left_out_on_request(clean_registry):
    register("unit-slow", slow=True)(lambda *args: None)
    assert "unit-slow" in list_algorithms()
    assert "unit-slow" not in list_algorithms(include_slow=False)


def test_load_algorithm_file(tmp_path):
    path = tmp_path / "program.py"
    path.write_text(GOOD_PROGRAM)
    function = load_algorithm_file(path)
    assert function(None, 1, 1, 1, 1) == "file-balancer"


@pytest.mark.parametrize(
    "text, message",
    [
        ("x = 1\n", "defines no callable rebalance_experts"),
        ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
        ("def broken(:\n", "failed to import: SyntaxError"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        load_algorithm_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="no balancer file at"):
        load_algorithm_file(tmp_path / "absent.py")


def test_entry_points_are_discovered(clean_registry, monkeypatch):
    def plugin(weight, num_replicas, num_groups, num_nodes, num_gpus):
        return "plugin"

    class FakeEntryPoint:
        name = "unit-plugin"

        def load(self):
            return plugin

    def fake_entry_points(group):
        assert group == "eplb_bench.algorithms"
        return [FakeEntryPoint()]

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_discovered", False)
    assert get_algorithm("unit-plugin") is plugin


def test_shipped_modules_all_load():
    assert registry.broken_algorithms() == {}


def test_broken_entry_point_is_reported_not_fatal(clean_registry, monkeypatch):
    class BrokenEntryPoint:
        name = "unit-broken"

        def load(self):
            raise ImportError("missing dependency")

    monkeypatch.setattr(metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    monkeypatch.setattr(registry, "_discovered", False)
    assert "deepseek" in list_algorithms() and "unit-broken" not in list_algorithms()
    assert "ImportError: missing dependency" in registry.broken_algorithms()["unit-broken"]
    with pytest.raises(RegistryError, match="entry point 'unit-broken' failed to load"):
        get_algorithm("unit-broken")
