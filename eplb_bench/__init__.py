"""eplb-bench: a benchmark and evaluation harness for expert-parallel load balancers."""

__version__ = "0.1.0"

from eplb_bench.core.contract import Placement, PlacementError, Scenario, ScenarioError, validate_placement
from eplb_bench.core.registry import (
    RegistryError,
    get_algorithm,
    list_algorithms,
    load_algorithm_file,
    register,
)

__all__ = [
    "Placement",
    "PlacementError",
    "RegistryError",
    "Scenario",
    "ScenarioError",
    "evaluate_program",
    "get_algorithm",
    "list_algorithms",
    "load_algorithm_file",
    "load_dataset",
    "lower_bound",
    "register",
    "validate_placement",
]


def __getattr__(name):
    # Datasets import numpy and the file loaders; load them only when asked.
    if name in ("load_dataset", "Dataset", "DatasetError"):
        if name == "load_dataset":
            from eplb_bench.data.catalog import load_dataset

            return load_dataset
        from eplb_bench.data import dataset

        return getattr(dataset, name)
    if name == "evaluate_program":  # the entry point for search frameworks (eplb_bench.evaluation.search)
        from eplb_bench.evaluation.search import evaluate_program

        return evaluate_program
    if name == "lower_bound":  # scipy loads only when bounds are asked for
        from eplb_bench.bounds.solver import lower_bound

        return lower_bound
    raise AttributeError(name)
