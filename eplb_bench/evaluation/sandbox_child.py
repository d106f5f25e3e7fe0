"""The child process of `eplb-bench evaluate`: runs one contributed program, nothing else.

Started as `python -I sandbox_child.py PROGRAM SETTINGS_JSON` in an empty working
folder, inside the sandbox that eplb_bench/evaluation/isolation.py describes. It never imports
eplb_bench (the harness is not inside the sandbox): the harness's modules, data and
memory stay in the parent, which sends one window per request. In order:

1. imports torch and numpy and says `started`;
2. answers `echo` requests (the transfer baseline: requests and replies of the sizes
   real calls have, before any of the program's code exists in the process);
3. on `load`: sets its rlimits (address space: what it maps now plus the budget; CPU
   time; file size; processes; no core dumps), installs an audit hook as a second layer
   (reading outside the Python installation and the working folder, writing outside
   the working folder, processes, sockets and ctypes are refused), then executes the
   program and says `ready` with the keywords its `rebalance_experts` accepts;
4. answers `call` requests until `exit`.

Protocol over stdin/stdout (the program's own prints go to stderr): each message is a
little-endian uint32 length and a JSON header, then `header["arrays"]` arrays, each a
uint64 length and the bytes of an .npy file (never pickles). The parent trusts none of
it: it times every call itself and validates every message.
"""

import importlib.abc
import inspect
import io
import json
import os
import resource
import struct
import sys
import time

import numpy as np
import torch

BLOCKED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "socket.", "os.kill", "os.putenv", "sys.addaudithook", "pty.spawn", "os.startfile", "winreg.",
                  "ctypes.")  # ctypes reaches libc's open unaudited
READ_EVENTS = ("os.listdir", "os.scandir", "os.chdir", "glob.glob")
WRITE_EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
                "os.chown", "os.utime", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# The optional keywords of the contract that a program may accept (eplb_bench.core.contract).
OPTIONAL_KEYWORDS = ("prev_phy2log", "report")
STANDALONE = ("a program file must stand alone: the harness is not inside the sandbox, so it cannot import "
              "eplb_bench; copy what you need from it into the file")


def encode_message(header: dict, arrays=()) -> bytes:
    """The protocol's bytes of one message (module docstring)."""
    text = json.dumps(dict(header, arrays=len(arrays))).encode()
    parts = [struct.pack("<I", len(text)), text]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        parts += [struct.pack("<Q", buffer.tell()), buffer.getvalue()]
    return b"".join(parts)


def write_message(stream, header: dict, arrays=()) -> None:
    stream.write(encode_message(header, arrays))
    stream.flush()


def read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the harness closed the pipe")
    return data


def read_message(stream) -> tuple[dict, list]:
    (size,) = struct.unpack("<I", read_exactly(stream, 4))
    header = json.loads(read_exactly(stream, size))
    arrays = []
    for _ in range(header["arrays"]):
        (length,) = struct.unpack("<Q", read_exactly(stream, 8))
        arrays.append(np.load(io.BytesIO(read_exactly(stream, length)), allow_pickle=False))
    return header, arrays


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PathRule:
    """Reading is allowed iff the deepest configured folder containing the path is an
    allowed one; writing only inside the working folder."""

    def __init__(self, allowed, denied, writable):
        roots = [(os.path.realpath(p), True) for p in allowed] + [(os.path.realpath(p), False) for p in denied]
        self.roots = sorted(roots, key=lambda item: -len(item[0]))
        self.writable = os.path.realpath(writable)
        self.own_pid = str(os.getpid())

    def allows_write(self, path) -> bool:
        if isinstance(path, int):
            return True
        return within(os.path.realpath(os.fsdecode(path if path is not None else ".")), self.writable)

    def allows(self, path) -> bool:
        if isinstance(path, int) or path is None:
            return True
        path = os.path.realpath(os.fsdecode(path))
        parts = path.split(os.sep)
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != self.own_pid:
            return False  # another process's memory, environment or files
        for root, allowed in self.roots:
            if within(path, root):
                return allowed
        return False


def install_guard(rule: PathRule) -> None:
    """Refuse, from now on, what a balancer has no business doing (module docstring).
    A second layer only: the kernel's namespaces and limits are the defence."""

    def guard(event, args):
        if event.startswith(BLOCKED_EVENTS):
            raise PermissionError(f"eplb-bench sandbox: {event} is not allowed")
        if event == "open" and args:
            path, mode, flags = (list(args) + [None, None])[:3]
            writes = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if not (rule.allows_write(path) if writes else rule.allows(path)):
                raise PermissionError(f"eplb-bench sandbox: {'writing' if writes else 'open of'} {path!r} is not allowed")
        elif event in READ_EVENTS and args and not rule.allows(args[0]):
            raise PermissionError(f"eplb-bench sandbox: {event} of {args[0]!r} is not allowed")
        elif event in WRITE_EVENTS and args and not all(rule.allows_write(a) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError(f"eplb-bench sandbox: {event} of {args[0]!r} is not allowed")

    sys.addaudithook(guard)


class NoHarness(importlib.abc.MetaPathFinder):
    """Refuses `import eplb_bench` with what to do instead, in either isolation."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("eplb_bench", "eplb_bench_algorithms"):
            raise ModuleNotFoundError(f"No module named {name!r}: {STANDALONE}", name=name)
        return None


def set_limits(limits: dict) -> None:
    """Kernel limits on this process and all it starts (hard limits: no way back up)."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    caps = {resource.RLIMIT_AS: mapped + limits["memory_bytes"], resource.RLIMIT_CPU: limits["cpu_seconds"],
            resource.RLIMIT_FSIZE: limits["file_bytes"], resource.RLIMIT_NPROC: limits["processes"],
            resource.RLIMIT_NOFILE: limits["open_files"], resource.RLIMIT_CORE: 0}
    for kind, value in caps.items():
        resource.setrlimit(kind, (value, value))


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def failure_status(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "alloc" in text.lower()):
        return "memory"
    return "error"


def load_program(source: str, path: str):
    namespace = {"__name__": "eplb_bench_program", "__file__": path}
    exec(compile(source, path, "exec"), namespace)
    function = namespace.get("rebalance_experts")
    if not callable(function):
        raise AttributeError("the program defines no function rebalance_experts")
    return function


def accepted_keywords(function) -> list[str]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return []
    return [name for name in OPTIONAL_KEYWORDS if name in parameters]


def as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"not an array: {type(value).__name__}")
    return array


def answer_echo(header: dict, replies) -> None:
    """A reply of the requested shapes: the transfer of a call without the call."""
    arrays = [torch.zeros(tuple(shape), dtype=torch.int64) for shape in header["shapes"]]
    write_message(replies, {"status": "ok", "seconds": 0.0}, [as_array(array) for array in arrays])


def answer_call(function, header: dict, arrays: list, replies) -> None:
    weight = torch.from_numpy(arrays[0])
    keywords = {}
    if "prev_phy2log" in header.get("keywords", ()):
        keywords["prev_phy2log"] = torch.from_numpy(arrays[1])
    if "report" in header.get("keywords", ()):
        keywords["report"] = {}
    try:
        started = time.perf_counter()
        output = function(weight, *header["scenario"], **keywords)
        seconds = time.perf_counter() - started
    except BaseException as exc:  # untrusted code: SystemExit and KeyboardInterrupt too
        write_message(replies, {"status": failure_status(exc), "reason": one_line(f"{type(exc).__name__}: {exc}")})
        return
    try:
        if not isinstance(output, (tuple, list)) or len(output) != 3:
            raise TypeError(f"expected (phy2log, log2phy, logcnt), got {type(output).__name__}")
        result = [as_array(item) for item in output]
        report = keywords.get("report")
        json.dumps(report)  # a report must be plain JSON data
    except Exception as exc:
        write_message(replies, {"status": "invalid", "reason": one_line(f"unusable output: {exc}")})
        return
    write_message(replies, {"status": "ok", "seconds": seconds, "report": report}, result)


def main(argv) -> None:
    program, settings = argv[1], json.loads(argv[2])
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the program's prints must not corrupt the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    torch.set_num_threads(settings["threads"])
    write_message(replies, {"status": "started"})
    function = None
    while True:
        header, arrays = read_message(requests)
        if header["op"] == "exit":
            return
        if header["op"] == "echo":
            answer_echo(header, replies)
        elif header["op"] == "load" and function is None:
            with open(program, encoding="utf-8") as handle:
                source = handle.read()
            sys.meta_path.insert(0, NoHarness())
            set_limits(settings["limits"])
            install_guard(PathRule(settings["allowed"] + [os.getcwd()], settings["denied"], os.getcwd()))
            try:
                function = load_program(source, program)
            except BaseException as exc:
                write_message(replies, {"status": failure_status(exc), "reason": one_line(f"{type(exc).__name__}: {exc}")})
                return
            write_message(replies, {"status": "ready", "accepts": accepted_keywords(function)})
        elif header["op"] == "call" and function is not None:
            answer_call(function, header, arrays, replies)
        else:
            return


if __name__ == "__main__":
    main(sys.argv)
