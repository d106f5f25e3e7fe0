"""The registry of balancers: register, list, get, and load one file.

Balancers come from three places, all found lazily on the first lookup:
every module of the folder `algorithms/` (imported as `eplb_bench_algorithms`; each
registers itself with `@register`),
packages that declare the entry-point group `eplb_bench.algorithms`, and single
files loaded with `load_algorithm_file` (the form OpenEvolve/ADRS programs take).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

ENTRY_POINT_GROUP = "eplb_bench.algorithms"
# The folder algorithms/ of the source tree, installed under this import name.
ALGORITHMS_PACKAGE = "eplb_bench_algorithms"


class RegistryError(LookupError):
    """An unknown or duplicate balancer name, or a file that defines no balancer."""


@dataclass(frozen=True)
class AlgorithmInfo:
    """A registered balancer and what the harness should know about it.

    `devices` lists the devices the balancer computes on natively (information for
    reports: a balancer gets its input on the run's device and moves it itself);
    empty when not declared, as for a program loaded from a file.
    `slow` balancers run only when named explicitly.
    """

    name: str
    function: Callable
    description: str = ""
    devices: tuple[str, ...] = ("cpu",)
    slow: bool = False
    source: str = ""
    accepts: frozenset[str] = field(default_factory=frozenset)
    # sha256 of the file that defines the balancer (its module, or the program file).
    source_hash: str | None = None


def file_sha256(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes, or None when there is no readable file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def defined_at(function: Callable) -> str:
    """Where a function is defined, as FILE:LINE."""
    code = getattr(function, "__code__", None)
    try:
        path = inspect.getsourcefile(function)
    except TypeError:
        path = None
    line = code.co_firstlineno if code is not None else "?"
    return f"{path or getattr(function, '__module__', '?')}:{line}"


_REGISTRY: dict[str, AlgorithmInfo] = {}
# Modules or entry points that failed to load, and names registered twice: name -> one-line reason.
_BROKEN: dict[str, str] = {}
# Names registered by more than one definition: name -> the FILE:LINE of each.
_CONFLICTS: dict[str, list[str]] = {}
_discovered = False


def _keyword_names(function: Callable) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _source_file(function: Callable) -> str | None:
    try:
        return inspect.getsourcefile(function)
    except TypeError:
        return None


def _conflict_reason(name: str) -> str:
    return f"balancer name {name!r} is registered more than once: {' and '.join(_CONFLICTS[name])}"


def register(
    name: str,
    *,
    description: str = "",
    devices: tuple[str, ...] = ("cpu",),
    slow: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator: add a `rebalance_experts` function to the registry under `name`.

    A name already taken by another definition raises RegistryError naming both
    places, and withdraws the name: neither balancer runs under it until one is
    renamed (`list` shows the conflict). The function is returned unchanged.
    """
    if not isinstance(name, str) or not name or any(c in name for c in ", \t\n/") or name.endswith(".py"):
        raise RegistryError(f"invalid balancer name {name!r} (names ending in .py belong to program files)")

    def decorate(function: Callable) -> Callable:
        place = defined_at(function)
        if name in _CONFLICTS:
            _CONFLICTS[name].append(place)
            _BROKEN[name] = _conflict_reason(name)
            raise RegistryError(_conflict_reason(name))
        if name in _REGISTRY:
            if _REGISTRY[name].source == place:
                return function  # the same definition imported again (a module reloaded)
            # Neither definition may stand in for the other: the name is withdrawn.
            _CONFLICTS[name] = [_REGISTRY.pop(name).source, place]
            _BROKEN[name] = _conflict_reason(name)
            raise RegistryError(_conflict_reason(name))
        _REGISTRY[name] = AlgorithmInfo(
            name=name,
            function=function,
            description=description or (inspect.getdoc(function) or "").split("\n")[0],
            devices=tuple(devices),
            slow=slow,
            source=place,
            accepts=_keyword_names(function),
            source_hash=file_sha256(_source_file(function)),
        )
        return function

    return decorate


def discover() -> None:
    """Import every module of `algorithms/` and every entry point, once.

    A module or entry point that fails to load is recorded in `broken_algorithms()`
    instead of stopping the others.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(ALGORITHMS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            try:
                importlib.import_module(f"{ALGORITHMS_PACKAGE}.{module.name}")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a contributor's module: report, keep the rest
                _BROKEN[module.name] = f"algorithms/{module.name}.py failed to import: {type(exc).__name__}: {exc}"
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            # A callable is registered under the entry point's name; a module registers itself.
            if callable(loaded) and (entry.name not in _REGISTRY or _REGISTRY[entry.name].function is not loaded):
                register(entry.name)(loaded)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            _BROKEN[entry.name] = f"entry point {entry.name!r} failed to load: {type(exc).__name__}: {exc}"


def broken_algorithms() -> dict[str, str]:
    """Modules and entry points that failed to load, with a one-line reason each."""
    discover()
    return dict(_BROKEN)


def list_algorithms(include_slow: bool = True) -> list[str]:
    """Names of every registered balancer, sorted."""
    discover()
    return sorted(n for n, info in _REGISTRY.items() if include_slow or not info.slow)


def algorithm_info(name: str) -> AlgorithmInfo:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in _BROKEN:
            raise RegistryError(_BROKEN[name]) from None
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise RegistryError(f"unknown balancer {name!r} (registered: {known})") from None


def get_algorithm(name: str) -> Callable:
    """The `rebalance_experts` callable registered under `name`."""
    return algorithm_info(name).function


def load_algorithm_file(path: str | Path) -> Callable:
    """Load one Python file and return the `rebalance_experts` function it defines.

    The file is imported as a fresh module each time, so two files of the same
    name do not shadow each other. Raises RegistryError for a missing file, a file
    that fails to import, or one without a callable `rebalance_experts`.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"no balancer file at {path}")
    module_name = f"eplb_bench_program_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"{path} is not a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the file is someone else's code, SystemExit included
        sys.modules.pop(module_name, None)
        raise RegistryError(f"{path} failed to import: {type(exc).__name__}: {exc}") from None
    function = getattr(module, "rebalance_experts", None)
    if not callable(function):
        raise RegistryError(f"{path} defines no callable rebalance_experts")
    return function


def program_name(path: str | Path) -> str:
    """A program file's balancer name: its file name, `.py` included, which no
    registered balancer can take (register refuses it), so `fast.py` never stands in
    for `fast`."""
    return Path(path).name


def file_algorithm_info(path: str | Path) -> AlgorithmInfo:
    """An unregistered AlgorithmInfo for a balancer loaded from a file."""
    function = load_algorithm_file(path)
    return AlgorithmInfo(
        name=program_name(path),
        function=function,
        description=f"loaded from {path}",
        devices=(),
        source=str(path),
        accepts=_keyword_names(function),
        source_hash=file_sha256(path),
    )
