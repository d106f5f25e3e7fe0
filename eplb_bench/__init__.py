"""eplb-bench: a benchmark and evaluation harness for expert-parallel load balancers."""

from .contract import Placement, PlacementError, Scenario, ScenarioError, validate_placement
from .registry import (
    RegistryError,
    get_algorithm,
    list_algorithms,
    load_algorithm_file,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "Placement",
    "PlacementError",
    "RegistryError",
    "Scenario",
    "ScenarioError",
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
        from . import datasets

        return getattr(datasets, name)
    if name == "lower_bound":  # scipy loads only when bounds are asked for
        from .bounds import lower_bound

        return lower_bound
    raise AttributeError(name)
