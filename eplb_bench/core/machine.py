"""Where a measurement was taken, and the thread pools it was taken with.

Runtimes depend on the CPU, on how many threads torch's and NumPy's pools use and on
the library versions, so every record carries them (`machine_identity`) and rankings
never mix records of different identities. `fix_threads` sets both pools to one size
for the whole process; with the default of one thread a busy machine slows a call
much less than it slows a pool of threads that wait on each other.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import numpy
import torch

DEFAULT_THREADS = 1
# Environment variables that size the pools of a child process (a sandboxed program).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_thread_limits = None  # threadpoolctl's limiter, kept so that its limits stay in force


def fix_threads(threads: int) -> None:
    """Size torch's intra-op pool and NumPy's BLAS/OpenMP pools to `threads`, and the
    pools of child processes started later (through the environment)."""
    global _thread_limits
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    _thread_limits = threadpool_limits(limits=threads)
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)


def usable_cores() -> list[int]:
    """The cores this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def harness_commit() -> str | None:
    """The git commit of the harness's source checkout ("+dirty" with uncommitted
    changes to tracked files), or None when installed from a package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def machine_identity(device: str) -> dict:
    """The facts a runtime depends on: CPU model, logical cores, the cores this process
    may use, thread count, library versions, commit, and the GPU for a CUDA device."""
    identity = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "cpu_affinity": usable_cores(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "commit": harness_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        identity["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return identity


def machine_label(host: dict, device: str) -> str:
    """One line naming a machine identity, e.g. "cpu: AMD EPYC 7B13, 2 cores, 1 thread,
    torch 2.13.0, numpy 2.1.0"; the GPU's name instead of the CPU's on CUDA."""
    kind = str(device or "cpu").split(":")[0]
    where = host.get("gpu") if kind == "cuda" and host.get("gpu") else (
        host.get("cpu_model") or host.get("processor") or host.get("machine") or "unknown host")
    parts = [f"{kind}: {where}"]
    if host.get("logical_cores") is not None:
        parts.append(f"{host['logical_cores']} cores")
    if host.get("threads") is not None:
        parts.append(f"{host['threads']} thread{'s' if host['threads'] != 1 else ''}")
    if (host.get("concurrent_jobs") or 1) > 1:
        parts.append(f"{host['concurrent_jobs']} concurrent jobs")
    for library in ("torch", "numpy"):
        if host.get(library):
            parts.append(f"{library} {str(host[library]).split('+')[0]}")
    return ", ".join(parts)
