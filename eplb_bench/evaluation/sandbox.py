"""A contributed program as a balancer that runs in a separate, isolated process.

`IsolatedProgram(path)` starts the child (eplb_bench/sandbox_child.py) inside the
isolation of eplb_bench/evaluation/isolation.py, and is then called like any balancer: each call
sends the one window to plan for (and the previous placement to a program that takes
`prev_phy2log`) and waits for the answer. Nothing the child sends is trusted:

- every write to the child and every read from it has a deadline;
- a message larger than the largest valid placement of the scenario (computed from
  the shape) is `invalid` before it is buffered, and the child's stderr keeps only
  its tail;
- anything that is not the protocol is `crash` or `invalid`.

One child can serve several scenario shapes (`start(shapes)`): the evaluator reuses a
child across the scenarios of different datasets, so that starting Python and importing
torch is paid once (eplb_bench.evaluation.evaluate says which scenarios may share one).

**Timing.** The runtime that scores is the parent's: from the first byte of the
request written to the last byte of the reply read, less the transfer baseline. The
baseline of every shape the child will serve is measured before the program is loaded,
in the same child: `echo` calls with the same request and reply sizes as real calls
(the fastest of each, at the narrowest valid log2phy, its doublings and the widest; a
reply in between gets the baseline interpolated by its size). The child's own clock is kept as
information only.

Statuses: `timeout` (no answer in time: the sandbox is killed), `crash` (the child died
or left the protocol), `memory` (an allocation failed under the cap), `error` (the
program raised, or could not be loaded), `invalid` (an unusable or oversized answer).
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import signal
import statistics
import struct
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from eplb_bench.core.machine import usable_cores
from eplb_bench.evaluation.isolation import (
    ISOLATIONS,
    SANDBOX_FOLDER,
    WORK_FOLDER,
    Cgroups,
    IsolationError,
    Limits,
    harness_paths,
    make_cgroups,
    namespaces_unavailable,
    process_command,
    python_roots,
    sandbox_command,
)
from eplb_bench.evaluation.runner import BalancerFailure, one_line
from eplb_bench.evaluation.sandbox_child import encode_message

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 4096
STARTUP_SECONDS = 120.0
# The largest JSON header a valid message has (a balancer's report included).
MAX_HEADER_BYTES = 1 << 20
# What an .npy header of a plain array takes at most, with room to spare.
NPY_HEADER_BYTES = 4096
STDERR_TAIL_BYTES = 64 << 10
# A balancer's report is information for the record; a larger one is replaced by a note.
REPORT_BYTES = 16 << 10
ECHO_REPEATS = 4
# The least runtime a call is scored at: below it the round trip is all transfer and
# noise, and the public scorers' 0.02 / t would reward the noise without bound.
RESOLUTION_SECONDS = 1e-5
# Echoes of replies this large vary little and cost more: fewer of them.
LARGE_REPLY_BYTES = 1 << 20
LARGE_ECHO_REPEATS = 2
# What the child may answer at each step; anything else is not the protocol.
FAILURES = ("error", "memory", "invalid")
PHASE_STATUSES = {"start": ("started",), "load": ("ready",) + FAILURES, "call": ("ok",) + FAILURES}
# Seconds a child that closed its reply pipe gets to exit before it is killed.
EXIT_GRACE = 2.0


class ChildGone(Exception):
    """The child closed its end of the reply pipe."""


def kept_report(report: dict) -> dict:
    """A program's report as the record keeps it: strict JSON of at most REPORT_BYTES,
    else a note of why not."""
    try:
        size = len(json.dumps(report, allow_nan=False))
    except ValueError:
        return {"dropped": "a report with NaN or infinite numbers"}
    return report if size <= REPORT_BYTES else {"dropped": f"a report of {size} bytes"}


def reply_shapes(num_layers: int, num_logical: int, num_replicas: int, width: int) -> list[tuple[int, ...]]:
    """Shapes of a placement whose log2phy has `width` columns: phy2log [L, R],
    log2phy [L, E, width], logcnt [L, E]."""
    return [(num_layers, num_replicas), (num_layers, num_logical, width), (num_layers, num_logical)]


def width_range(num_logical: int, num_replicas: int) -> tuple[int, int]:
    """The narrowest and widest valid log2phy: max(logcnt) is at least ceil(R / E)
    and at most R - E + 1 (every other expert keeps one replica)."""
    return -(-num_replicas // num_logical), num_replicas - num_logical + 1


def calibration_widths(num_logical: int, num_replicas: int) -> list[int]:
    """The log2phy widths the transfer baseline is measured at: the narrowest, its
    doublings, and the widest (transfer time is not linear in the size over so wide a
    range, so the points are dense where real placements lie)."""
    narrowest, widest = width_range(num_logical, num_replicas)
    widths = {narrowest, widest}
    width = narrowest * 2
    while width * 5 < widest * 4:   # a doubling within 25% of the widest adds little
        widths.add(width)
        width *= 2
    return sorted(widths)


def largest_reply_bytes(num_layers: int, num_logical: int, num_replicas: int) -> int:
    """Bytes of the arrays of the largest valid placement (int64), .npy headers included."""
    shapes = reply_shapes(num_layers, num_logical, num_replicas, width_range(num_logical, num_replicas)[1])
    return sum(8 * math.prod(shape) + NPY_HEADER_BYTES for shape in shapes)


class Channel:
    """The child's stdin, stdout and stderr, read and written with deadlines.

    stderr is drained whenever the parent waits, into a tail of STDERR_TAIL_BYTES.
    """

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.requests = process.stdin.fileno()
        self.replies = process.stdout.fileno()
        self.errors = process.stderr.fileno()
        for fd in (self.requests, self.replies, self.errors):
            os.set_blocking(fd, False)
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.stderr_open = True

    def keep_stderr(self) -> None:
        try:
            chunk = os.read(self.errors, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.stderr_open = False
            return
        self.tail.append(chunk)
        self.tail_bytes += len(chunk)
        while self.tail_bytes - len(self.tail[0]) >= STDERR_TAIL_BYTES:
            self.tail_bytes -= len(self.tail.popleft())

    def wait(self, readable: list[int], writable: list[int], deadline: float) -> tuple[list, list]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        watched = readable + ([self.errors] if self.stderr_open else [])
        ready_read, ready_write, _ = select.select(watched, writable, [], remaining)
        if self.errors in ready_read:
            self.keep_stderr()
        if not ready_read and not ready_write:
            raise TimeoutError
        return ready_read, ready_write

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            _, ready = self.wait([], [self.requests], deadline)
            if ready:
                try:
                    written = os.write(self.requests, view[: 1 << 20])
                except BlockingIOError:
                    continue
                view = view[written:]

    def read_exactly(self, size: int, deadline: float) -> bytes:
        buffer, filled = bytearray(size), 0
        while filled < size:
            ready, _ = self.wait([self.replies], [], deadline)
            if self.replies not in ready:
                continue
            try:
                chunk = os.read(self.replies, min(size - filled, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise ChildGone
            buffer[filled: filled + len(chunk)] = chunk
            filled += len(chunk)
        return bytes(buffer)

    def last_stderr_line(self) -> str:
        try:
            while self.stderr_open and select.select([self.errors], [], [], 0)[0]:
                self.keep_stderr()
        except (OSError, ValueError):
            pass
        lines = [line for line in b"".join(self.tail).decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""


class IsolatedProgram:
    """A program file, called as a balancer in an isolated child process."""

    def __init__(self, path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                 memory_mb: float = DEFAULT_MEMORY_MB, threads: int | None = None, isolation: str = "namespaces"):
        if isolation not in ISOLATIONS:
            raise IsolationError(f"unknown isolation {isolation!r} (choose from {', '.join(ISOLATIONS)})")
        if isolation == "namespaces":
            reason = namespaces_unavailable()
            if reason:
                raise IsolationError(reason)
        self.path = str(Path(path).resolve())
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.threads = threads or torch.get_num_threads()
        self.isolation = isolation
        self.accepts: frozenset[str] = frozenset()
        self.last_call_seconds: float | None = None
        self.roundtrip_seconds: list[float] = []
        self.baseline_seconds: list[float] = []
        self.child_seconds: list[float] = []
        # The transfer baseline of each shape served: {(L, E, R): {"plain"/"with_previous": [(bytes, s)]}}.
        self.calibration: dict[tuple, dict] = {}
        self.limits: Limits | None = None
        self.process: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.cgroups = Cgroups({})
        self.caps: dict = {}
        self.workdir: tempfile.TemporaryDirectory | None = None  # the working folder of --isolation process
        self.shapes: tuple[tuple[int, int, int], ...] = ()

    # -- the child's life --------------------------------------------------
    def start(self, shapes: list[tuple[int, int, int]], calls: int = 16) -> None:
        """Start the child for the scenario shapes (num_layers, num_logical, num_replicas)
        it will serve, calibrate the transfer of each, then load the program.

        `calls` (the calls to expect, over all shapes) sizes the child's CPU-time limit.
        """
        self.shapes, self.calls = tuple(dict.fromkeys(tuple(shape) for shape in shapes)), calls
        self.limits = Limits(memory_bytes=int(self.memory_mb * 2**20),
                             cpu_seconds=int(self.threads * (STARTUP_SECONDS + self.timeout * (calls + 2))),
                             processes=self.threads + 32)
        # The cores this process may use: all of them serially, one in a pinned worker of --jobs.
        cores = usable_cores()
        self.cgroups = make_cgroups(self.limits.processes, self.limits.memory_bytes, cores)
        self.caps = {"processes": "pids cgroup" if "pids" in self.cgroups.folders else "RLIMIT_NPROC",
                     "memory": "memory cgroup and RLIMIT_AS" if "memory" in self.cgroups.folders else "RLIMIT_AS",
                     "cpus": (f"cpuset cgroup {cores}" if "cpuset" in self.cgroups.folders
                              else f"affinity {cores} (the program can widen it)")}
        self.launch()
        self.receive(max(STARTUP_SECONDS, self.timeout), 0, "starting the child", "start")
        for shape in self.shapes:
            self.calibrate(*shape)
        self.send(encode_message({"op": "load"}), time.monotonic() + self.timeout)
        header, _ = self.receive(max(STARTUP_SECONDS, self.timeout), 0, "loading the program", "load")
        if header["status"] != "ready":
            raise self.fail(header["status"], f"loading the program: {header['reason']}")
        accepts = header.get("accepts")
        if not isinstance(accepts, list) or not all(isinstance(name, str) for name in accepts):
            raise self.fail("invalid", "loading the program: the child's answer is not the protocol")
        self.accepts = frozenset(accepts) & {"prev_phy2log", "report"}

    def restart(self) -> None:
        """A fresh child for the same shape, after one that timed out, crashed or ran out
        of memory: the next, independent problem (a cross-workload dataset's next
        workload) is not charged for the last one's end. BalancerFailure if it cannot start."""
        self.close()
        self.start(list(self.shapes), calls=self.calls)

    def alive(self) -> bool:
        """Whether the child is still there to take calls (a timeout, a protocol breach or a
        crash killed it)."""
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        settings = {"threads": self.threads, "limits": self.limits.as_dict()}
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": str(self.threads)}
        if self.isolation == "namespaces":
            environment.update(HOME=WORK_FOLDER, TMPDIR=WORK_FOLDER)
            settings.update(allowed=python_roots() + [SANDBOX_FOLDER], denied=[])
            command = sandbox_command(self.path, [json.dumps(settings)], environment, self.limits)
            cwd = None
        else:
            self.workdir = tempfile.TemporaryDirectory(prefix="eplb-evaluate-")
            environment.update(HOME=self.workdir.name, TMPDIR=self.workdir.name)
            settings.update(allowed=python_roots() + ["/dev/null", "/dev/urandom", "/proc", "/sys/devices/system/cpu",
                                                      "/usr/lib", "/lib", "/etc/ld.so.cache", self.path],
                            denied=harness_paths())
            command = process_command(self.path, [json.dumps(settings)])
            cwd = self.workdir.name
        self.process = subprocess.Popen(self.cgroups.command(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=cwd, env=environment, start_new_session=True)
        self.channel = Channel(self.process)

    def calibrate(self, num_layers: int, num_logical: int, num_replicas: int) -> None:
        """The fastest echo round trip of one shape at each calibration width, with and
        without a previous placement in the request."""
        weight = np.zeros((num_layers, num_logical), dtype=np.int64)
        previous = np.zeros((num_layers, num_replicas), dtype=np.int64)
        points = {}
        for with_previous in (False, True):
            request = [weight, previous] if with_previous else [weight]
            for width in calibration_widths(num_logical, num_replicas):
                shapes = reply_shapes(num_layers, num_logical, num_replicas, width)
                repeats = ECHO_REPEATS if 8 * math.prod(shapes[1]) < LARGE_REPLY_BYTES else LARGE_ECHO_REPEATS
                trips = []
                for _ in range(repeats + 1):  # the first one warms the buffers up and is not kept
                    seconds, reply, echoed, size = self.exchange({"op": "echo", "shapes": shapes}, request,
                                                                 "the transfer baseline",
                                                                 (num_layers, num_logical, num_replicas))
                    if reply["status"] != "ok" or len(echoed) != 3:
                        raise self.fail("crash", "the transfer baseline: the child failed an echo")
                    trips.append(seconds)
                # The fastest echo: noise only ever lengthens a transfer, and a baseline above a
                # call's own transfer would hand its program time (down to the 10 us floor).
                points.setdefault(with_previous, []).append((size, min(trips[1:])))
        self.calibration[(num_layers, num_logical, num_replicas)] = {
            "with_previous" if key else "plain": value for key, value in points.items()}

    def baseline(self, shape: tuple, with_previous: bool, reply_bytes: int) -> float:
        """The transfer time of a call of `shape` whose reply has `reply_bytes`:
        interpolated between the two calibration points around it (clamped at the ends)."""
        points = self.calibration[shape]["with_previous" if with_previous else "plain"]
        sizes = [size for size, _ in points]
        seconds = [value for _, value in points]
        return float(np.interp(reply_bytes, sizes, seconds))

    def close(self) -> None:
        """End the child: killed at once, since everything it sent is already read and a
        Python with torch takes 0.4 s to exit by itself; then its cgroups and folder go."""
        if self.process is not None:
            self.kill()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            self.process = None
        self.cgroups.remove()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def kill(self) -> None:
        """SIGKILL the child's session (namespaces: the whole sandbox dies with it) and
        whatever is left in its cgroup."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.cgroups.kill()
        self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def fail(self, status: str, reason: str) -> BalancerFailure:
        """Kill the child and describe why (the caller raises what this returns)."""
        if self.process is not None and status in ("timeout", "invalid", "crash"):
            self.kill()
        return BalancerFailure(status, one_line(reason))

    # -- messages ----------------------------------------------------------
    def send(self, request: bytes, deadline: float) -> None:
        try:
            self.channel.write(request, deadline)
        except TimeoutError:
            raise self.fail("timeout", f"the child took no request for {self.timeout:g} s; the process was killed") from None
        except (BrokenPipeError, ConnectionResetError):
            raise self.fail("crash", self.death("it stopped reading requests")) from None

    def receive(self, seconds: float, reply_budget: int, what: str, phase: str) -> tuple[dict, list]:
        """One validated message of `phase` (PHASE_STATUSES) within `seconds`:
        (header, arrays); the arrays add up to at most `reply_budget` bytes."""
        deadline = time.monotonic() + seconds
        try:
            (size,) = struct.unpack("<I", self.channel.read_exactly(4, deadline))
            if size > MAX_HEADER_BYTES:
                raise self.fail("invalid", f"{what}: a message header of {size} bytes")
            header = json.loads(self.channel.read_exactly(size, deadline))
            self.check_header(header, what, phase)
            count = header["arrays"]
            if count and count != 3:
                raise self.fail("invalid", f"{what}: {count} arrays, a placement is 3")
            arrays, left = [], reply_budget
            for _ in range(count):
                (length,) = struct.unpack("<Q", self.channel.read_exactly(8, deadline))
                if length > left:
                    raise self.fail("invalid", f"{what}: the answer exceeds the {reply_budget} bytes of the largest "
                                               "valid placement for this scenario")
                left -= length
                array = np.load(io.BytesIO(self.channel.read_exactly(length, deadline)), allow_pickle=False)
                if not isinstance(array, np.ndarray):
                    raise ValueError("not an .npy array")
                arrays.append(array)
            return header, arrays
        except TimeoutError:
            raise self.fail("timeout", f"{what} took longer than {seconds:g} s; the process was killed") from None
        except ChildGone:
            raise self.fail("crash", self.death("it closed its reply pipe")) from None
        except BalancerFailure:
            raise
        except (ValueError, TypeError, KeyError, struct.error, UnicodeDecodeError, OverflowError, RecursionError) as exc:
            raise self.fail("invalid", f"{what}: the child's answer is not the protocol ({exc})") from None

    def check_header(self, header, what: str, phase: str) -> None:
        """A header is a dict with a status of its phase, a string reason for a failure
        and a small array count."""
        if not isinstance(header, dict) or not isinstance(header.get("arrays"), int) or header["arrays"] < 0:
            raise self.fail("invalid", f"{what}: the child's answer is not the protocol")
        status = header.get("status")
        if not isinstance(status, str) or status not in PHASE_STATUSES[phase]:
            raise self.fail("invalid", f"{what}: the child's answer has no known status")
        if status in FAILURES:
            if not isinstance(header.get("reason"), str):
                raise self.fail("invalid", f"{what}: a failure without a reason")
            if header["arrays"]:
                raise self.fail("invalid", f"{what}: a failure with arrays")

    def exchange(self, header: dict, arrays, what: str, shape: tuple) -> tuple[float, dict, list, int]:
        """Send a request and read its reply: (seconds from the first byte written to the
        last byte read, header, arrays, bytes of the arrays).

        The clock starts before the first byte, not after the last: a child may read
        and work on the start of a request while the rest is still being written (it
        can shrink the pipe to make that long). The calibration's echo requests have
        the same sizes, so the baseline takes the transfer out again.
        """
        request = encode_message(header, arrays)
        if self.process.poll() is None and select.select([self.channel.replies], [], [], 0)[0]:
            # Bytes before the request: a program that took the protocol over answers ahead.
            raise self.fail("invalid", f"{what}: the child wrote before it was asked")
        started = time.perf_counter()
        self.send(request, time.monotonic() + self.timeout)
        reply, arrays_back = self.receive(self.timeout, largest_reply_bytes(*shape), what, "call")
        seconds = time.perf_counter() - started
        return seconds, reply, arrays_back, sum(array.nbytes for array in arrays_back)

    def death(self, how_noticed: str) -> str:
        """Why the child is gone: its exit status or signal and its last line of stderr."""
        try:
            code = self.process.wait(timeout=EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            return f"the process broke the protocol: {how_noticed}; it was killed"
        last = self.channel.last_stderr_line()
        if self.isolation == "namespaces" and 128 < code < 128 + signal.NSIG:
            code = 128 - code   # bwrap exits with 128 + the signal that killed the program
        if code == -signal.SIGKILL and self.cgroups.memory_exhausted():
            raise BalancerFailure("memory", one_line(f"the process was killed at its memory cap ({how_noticed})"))
        if code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += " (the system may have run out of memory)"
            elif code == -signal.SIGXCPU:
                how += " (its CPU time limit)"
        else:
            how = f"exit status {code}"
        return f"the process died: {how}" + (f"; last output: {last}" if last else "")

    # -- the balancer ------------------------------------------------------
    def __call__(self, weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                 prev_phy2log: torch.Tensor | None = None, report: dict | None = None):
        """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt) from the child.

        prev_phy2log: [num_layers, num_replicas] or None; `report` is filled with the
        program's report when it takes one.
        """
        if self.process is None:
            raise BalancerFailure("crash", "the program's process is gone")
        shape = (weight.shape[0], weight.shape[1], num_replicas)
        if shape not in self.calibration:
            raise BalancerFailure("invalid", f"the child was not started for shape {shape}")
        self.last_call_seconds = None
        keywords = [name for name, given in (("prev_phy2log", prev_phy2log), ("report", report))
                    if given is not None and name in self.accepts]
        arrays = [weight.detach().cpu().numpy()]
        if "prev_phy2log" in keywords:
            arrays.append(prev_phy2log.detach().cpu().numpy().astype(np.int64, copy=False))
        header = {"op": "call", "scenario": [num_replicas, num_groups, num_nodes, num_gpus], "keywords": keywords}
        seconds, reply, output, size = self.exchange(header, arrays, "the call", shape)
        if reply["status"] != "ok":
            raise BalancerFailure(reply["status"], one_line(reply["reason"]))
        if len(output) != 3:
            raise BalancerFailure("invalid", f"expected 3 arrays, got {len(output)}")
        baseline = self.baseline(shape, "prev_phy2log" in keywords, size)
        self.roundtrip_seconds.append(seconds)
        self.baseline_seconds.append(baseline)
        child_clock = reply.get("seconds")
        if isinstance(child_clock, (int, float)) and math.isfinite(child_clock):
            self.child_seconds.append(float(child_clock))
        self.last_call_seconds = max(seconds - baseline, RESOLUTION_SECONDS)
        if report is not None and isinstance(reply.get("report"), dict):
            report.update(kept_report(reply["report"]))
        return tuple(torch.from_numpy(array.copy()) for array in output)

    def calls_so_far(self) -> tuple[int, int]:
        """A mark to pass to summary(since=...): the timed calls and child clocks so far."""
        return len(self.roundtrip_seconds), len(self.child_seconds)

    def summary(self, shape: tuple | None = None, since: tuple[int, int] = (0, 0)) -> dict:
        """What the record of one scenario keeps of this child: isolation, limits, the
        timing's parts of the calls since the mark `since` (calls_so_far), and the
        calibration of its `shape` (the first shape served by default)."""
        def median_ms(values):
            return statistics.median(values) * 1e3 if values else None

        shape = self.shapes[0] if shape is None and self.shapes else shape
        calls, clocks = since
        return {"isolation": self.isolation, "timeout_s": self.timeout, "memory_mb": self.memory_mb,
                "limits": self.limits.as_dict() if self.limits else None, "caps": self.caps,
                "roundtrip_ms": median_ms(self.roundtrip_seconds[calls:]),
                "transfer_baseline_ms": median_ms(self.baseline_seconds[calls:]),
                "child_clock_ms": median_ms(self.child_seconds[clocks:]),
                "shapes_served": len(self.shapes),
                "calibration_ms": {key: [[size, seconds * 1e3] for size, seconds in points]
                                   for key, points in self.calibration.get(shape, {}).items()}}
