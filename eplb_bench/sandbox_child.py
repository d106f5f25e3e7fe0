"""The child process of `eplb-bench evaluate`: runs one contributed program, nothing else.

Started as `python -I sandbox_child.py PROGRAM MEMORY_BYTES SETTINGS_JSON` in an empty
working directory. It imports torch and numpy, caps its address space at what it
uses then plus MEMORY_BYTES, installs an audit hook that refuses reading outside the
Python installation and its working directory (and anything under the denied folders,
such as the datasets), writing outside the working directory, processes, sockets and
ctypes, and
only then executes the program. It never imports eplb_bench: the harness's modules,
data and memory stay in the parent, which sends one window per request.

Protocol over stdin/stdout (the program's own prints go to stderr): each message is
a little-endian uint32 length and a JSON header, then `header["arrays"]` arrays, each
a uint64 length and the bytes of an .npy file (never pickles).
"""

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
                  "socket.connect", "socket.bind", "socket.sendto", "os.kill", "os.putenv", "sys.addaudithook",
                  "pty.spawn", "os.startfile", "winreg.", "ctypes.")  # ctypes reaches libc's open unaudited
READ_EVENTS = ("os.listdir", "os.scandir", "os.chdir", "glob.glob")
WRITE_EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
                "os.chown", "os.utime", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def write_message(stream, header: dict, arrays=()) -> None:
    header = dict(header, arrays=len(arrays))
    text = json.dumps(header).encode()
    stream.write(struct.pack("<I", len(text)) + text)
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        stream.write(struct.pack("<Q", buffer.tell()) + buffer.getvalue())
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
    """Refuse, from now on, what a balancer has no business doing (module docstring)."""

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


def cap_memory(extra_bytes: int) -> None:
    """Limit the address space to what the process maps now plus `extra_bytes`."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    limit = mapped + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


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


def as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"not an array: {type(value).__name__}")
    return array


def serve(function, requests, replies) -> None:
    while True:
        header, arrays = read_message(requests)
        if header["op"] == "exit":
            return
        weight = torch.from_numpy(arrays[0])
        try:
            started = time.perf_counter()
            output = function(weight, *header["scenario"])
            seconds = time.perf_counter() - started
        except BaseException as exc:  # untrusted code: SystemExit and KeyboardInterrupt too
            write_message(replies, {"status": failure_status(exc), "reason": one_line(f"{type(exc).__name__}: {exc}")})
            continue
        try:
            if not isinstance(output, (tuple, list)) or len(output) != 3:
                raise TypeError(f"expected (phy2log, log2phy, logcnt), got {type(output).__name__}")
            result = [as_array(item) for item in output]
        except Exception as exc:
            write_message(replies, {"status": "invalid", "reason": one_line(f"unusable output: {exc}")})
            continue
        write_message(replies, {"status": "ok", "seconds": seconds}, result)


def main(argv) -> None:
    program, memory_bytes, settings = argv[1], int(argv[2]), json.loads(argv[3])
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the program's prints must not corrupt the protocol
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    with open(program, encoding="utf-8") as handle:
        source = handle.read()
    torch.set_num_threads(settings.get("threads", torch.get_num_threads()))
    rule = PathRule(settings["allowed"] + [os.getcwd()], settings["denied"], os.getcwd())
    cap_memory(memory_bytes)
    install_guard(rule)
    try:
        function = load_program(source, program)
    except BaseException as exc:
        write_message(replies, {"status": failure_status(exc), "reason": one_line(f"{type(exc).__name__}: {exc}")})
        return
    write_message(replies, {"status": "ready"})
    serve(function, requests, replies)


if __name__ == "__main__":
    main(sys.argv)
