"""A contributed program as a balancer that runs in a separate, confined process.

`IsolatedProgram(path)` is called like any balancer. Each call sends the one window
to plan for to a child process (eplb_bench/sandbox_child.py) and waits at most
`timeout` seconds for its answer; the child caps its memory and refuses file access
outside the Python installation (the datasets and the harness's own folders
included), processes and sockets. Whatever goes wrong ends as a BalancerFailure with
its own status and a one-line reason:

- `timeout`: no answer in time (the child is killed);
- `crash`: the child died (exit status or signal, and the last line it printed);
- `memory`: an allocation failed under the cap;
- `error`: the program raised, or could not be loaded;
- `invalid`: the output is not three arrays (the runner validates the rest).

`last_call_seconds` holds the child's own measurement of the last call: the
balancer alone, without the transfer. The child's clock is the program's to tamper
with (it shares the process), so `roundtrip_seconds` keeps the parent's own
measurement of every call, transfer included, as a check on it.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import site
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .datasets import datasets_dir
from .runner import BalancerFailure, one_line
from .sandbox_child import write_message

CHILD = Path(__file__).with_name("sandbox_child.py")
DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 4096
STARTUP_SECONDS = 120.0
MAX_MESSAGE_BYTES = 1 << 31


def python_roots() -> list[str]:
    """Folders the child may read: the interpreter's and its packages'."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"], *site.getsitepackages()}
    return sorted(roots) + ["/dev/null", "/dev/urandom", "/proc", "/sys/devices/system/cpu", "/sys/fs/cgroup",
                            "/usr/lib", "/lib", "/etc/ld.so.cache", "/usr/share/zoneinfo"]


def denied_roots() -> list[str]:
    """The harness's source tree and data, even where it lies under an allowed folder."""
    package = Path(__file__).resolve().parent
    checkout = [str(package.parent)] if (package.parent / "pyproject.toml").exists() else []
    return [str(package), str(datasets_dir())] + checkout


class ChildGone(Exception):
    pass


class IsolatedProgram:
    """A program file, called as a balancer in a confined child process."""

    def __init__(self, path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                 memory_mb: float = DEFAULT_MEMORY_MB, threads: int | None = None):
        self.path = str(Path(path).resolve())
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.threads = threads or torch.get_num_threads()
        self.last_call_seconds: float | None = None
        self.roundtrip_seconds: list[float] = []
        self.process: subprocess.Popen | None = None
        self.workdir: tempfile.TemporaryDirectory | None = None
        self.stderr = None

    # -- the child's life --------------------------------------------------
    def start(self) -> None:
        self.workdir = tempfile.TemporaryDirectory(prefix="eplb-evaluate-")
        settings = {"allowed": python_roots() + [self.path], "denied": denied_roots(), "threads": self.threads}
        self.stderr = tempfile.TemporaryFile()
        environment = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ}
        environment.update(HOME=self.workdir.name, TMPDIR=self.workdir.name, OMP_NUM_THREADS=str(self.threads))
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(CHILD), self.path, str(int(self.memory_mb * 2**20)), json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, cwd=self.workdir.name,
            env=environment, start_new_session=True)
        header, _ = self.receive(max(STARTUP_SECONDS, self.timeout), starting=True)
        if header.get("status") != "ready":
            reason = header.get("reason", "")
            self.close()
            raise BalancerFailure(header.get("status", "error"), f"loading the program: {reason}")

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    write_message(self.process.stdin, {"op": "exit"})
                    self.process.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    self.kill()
            self.process = None
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- messages ----------------------------------------------------------
    def read_exactly(self, size: int, deadline: float) -> bytes:
        stream, chunks, missing = self.process.stdout, [], size
        while missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(stream.fileno(), min(missing, 1 << 20))
            if not chunk:
                raise ChildGone
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def receive(self, seconds: float, starting: bool = False) -> tuple[dict, list]:
        deadline = time.monotonic() + seconds
        try:
            (size,) = struct.unpack("<I", self.read_exactly(4, deadline))
            header = json.loads(self.read_exactly(min(size, MAX_MESSAGE_BYTES), deadline))
            arrays = []
            for _ in range(int(header.get("arrays", 0))):
                (length,) = struct.unpack("<Q", self.read_exactly(8, deadline))
                if length > MAX_MESSAGE_BYTES:
                    raise BalancerFailure("invalid", f"an output array of {length} bytes")
                arrays.append(np.load(io.BytesIO(self.read_exactly(length, deadline)), allow_pickle=False))
            return header, arrays
        except TimeoutError:
            self.kill()
            self.close()
            what = "loading the program" if starting else "the call"
            raise BalancerFailure("timeout", f"{what} took longer than {seconds:g} s; the process was killed") from None
        except ChildGone:
            raise BalancerFailure("crash", self.death()) from None
        except (ValueError, KeyError, struct.error) as exc:
            self.kill()
            self.close()
            raise BalancerFailure("invalid", f"unreadable answer: {one_line(str(exc))}") from None

    def death(self) -> str:
        code = self.process.wait()
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        self.close()
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == -signal.SIGKILL:
            how += " (the system may have run out of memory)"
        return one_line(f"the process died: {how}" + (f"; last output: {lines[-1]}" if lines else ""))

    # -- the balancer ------------------------------------------------------
    def __call__(self, weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int):
        """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt) from the child."""
        if self.process is None:
            self.start()
        self.last_call_seconds = None
        started = time.perf_counter()
        try:
            write_message(self.process.stdin, {"op": "call", "scenario": [num_replicas, num_groups, num_nodes, num_gpus]},
                          [weight.detach().cpu().numpy()])
        except BrokenPipeError:
            raise BalancerFailure("crash", self.death()) from None
        header, arrays = self.receive(self.timeout)
        self.roundtrip_seconds.append(time.perf_counter() - started)
        if header.get("status") != "ok":
            raise BalancerFailure(header.get("status", "invalid"), header.get("reason", "no reason given"))
        if len(arrays) != 3:
            raise BalancerFailure("invalid", f"expected 3 arrays, got {len(arrays)}")
        self.last_call_seconds = float(header["seconds"])
        return tuple(torch.from_numpy(np.array(array)) for array in arrays)
