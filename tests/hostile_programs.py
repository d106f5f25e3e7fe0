"""Hostile program files for `eplb-bench evaluate`, one per way of cheating or breaking
the harness. Each is a template: `{name}` fields are filled in by the test with paths,
ports, process ids and a marker that any process it starts carries in its command line.

Most of them first switch the child's audit hook off (DISARM), as published attacks
did: the hook is a second layer, and these programs show that the kernel's isolation
holds without it.
"""

# Rebinds the module globals the child's audit hook reads and lets its path rule allow
# everything: from here on the hook refuses nothing.
DISARM = '''
import gc as _gc, sys as _sys
_child = _sys.modules["__main__"]
_child.BLOCKED_EVENTS = ("\\0",)
_child.READ_EVENTS = ()
_child.WRITE_EVENTS = ()
for _rule in [o for o in _gc.get_objects() if type(o).__name__ == "PathRule"]:
    type(_rule).allows = lambda self, path: True
    type(_rule).allows_write = lambda self, path: True
'''

SIGNATURE = "def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):\n"

# A valid placement from round-robin replication (heaviest experts first): what a
# hostile program returns after its attack, so that its score can be checked as honest.
HONEST_TAIL = '''
def honest(weight, num_replicas):
    import torch
    layers, experts = weight.shape
    order = weight.sum(0).argsort(descending=True)
    slots = torch.arange(num_replicas)
    phy2log = order[slots % experts].repeat(layers, 1)
    logcnt = torch.bincount(phy2log[0], minlength=experts).repeat(layers, 1)
    log2phy = torch.full((layers, experts, int(logcnt.max())), -1)
    log2phy[:, order[slots % experts], slots // experts] = slots
    return phy2log, log2phy, logcnt
'''

PROGRAMS = {
    # Escapes: the data, the checkout, other processes, persistent files.
    "reads_data": DISARM + HONEST_TAIL + '''
import glob, os, sqlite3, torch
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    found = []
    for attempt in (lambda: glob.glob({datasets!r} + "/*.npz"),
                    lambda: open({datasets!r} + "/mixtral-8x7b.npz", "rb").read(64),
                    lambda: torch.from_file({datasets!r} + "/mixtral-8x7b.npz", size=64, dtype=torch.uint8),
                    lambda: sqlite3.connect("file:" + {datasets!r} + "/mixtral-8x7b.json?mode=ro", uri=True)
                                   .execute("pragma schema_version").fetchall(),
                    lambda: open({checkout!r} + "/pyproject.toml").read(),
                    lambda: os.listdir({checkout!r} + "/eplb_bench"),
                    lambda: open("/proc/{parent}/environ", "rb").read(),
                    lambda: os.listdir("/proc/{parent}/fd")):
        try:
            value = attempt()
        except Exception:
            continue
        if value is not None and len(value) > 0:
            found.append(repr(value)[:40])
    if found:
        raise RuntimeError("CHEATED: " + "; ".join(found))
    return honest(weight, num_replicas)
''',
    "plants_files": DISARM + HONEST_TAIL + '''
import os
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for target in ({site_packages!r} + "/planted_{marker}.pth", {outside!r}, "/tmp/planted_{marker}"):
        try:
            with open(target, "w") as handle:
                handle.write("import os; os.system('echo planted')\\n")
        except OSError:
            pass
        try:   # the relative path with dir_fd that an audit hook checks against the wrong folder
            root = os.open("/", os.O_RDONLY)
            os.close(os.open(target.lstrip("/"), os.O_WRONLY | os.O_CREAT, dir_fd=root))
        except OSError:
            pass
    return honest(weight, num_replicas)
''',
    "leaves_processes": DISARM + HONEST_TAIL + '''
import subprocess, sys, time
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    sleepers = [subprocess.Popen(["/bin/sh", "-c", 'cat {datasets}/*.npz > stolen; exec "$0" -c "$1" {marker}',
                                  sys.executable, sleeper], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    time.sleep(0.5)
    if any(process.poll() is not None for process in sleepers):
        raise RuntimeError("a sleeper did not start")
    return honest(weight, num_replicas)
''',
    "fork_bomb": DISARM + '''
import os, time
''' + SIGNATURE + '''
    children = 0
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        children += 1
''',
    "signals_parent": DISARM + HONEST_TAIL + '''
import os, signal
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for pid in ({parent}, {bystander}, -1, 1):   # -1: every process this one may signal
        for attempt in (lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGSTOP),
                        lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                attempt()
            except (OSError, ValueError):
                pass
    return honest(weight, num_replicas)
''',
    "network": DISARM + HONEST_TAIL + '''
import socket
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for send in (lambda s: s.sendto(b"{marker}", ("127.0.0.1", {port})),
                 lambda s: s.sendmsg([b"{marker}"], [], 0, ("127.0.0.1", {port})),
                 lambda s: s.sendto(b"{marker}", ("10.0.0.1", {port}))):
        try:
            send(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except OSError:
            pass
    return honest(weight, num_replicas)
''',
    "imports_harness": SIGNATURE + '''
    from eplb_bench import get_algorithm
    return get_algorithm("fast")(weight, num_replicas, num_groups, num_nodes, num_gpus)
''',
    # Forged time.
    "forges_clock": HONEST_TAIL + '''
import time
_sleep = time.sleep
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    time.perf_counter = lambda: float("nan")
    _sleep(0.3)
    return honest(weight, num_replicas)
''',
    "lazy_output": HONEST_TAIL + '''
import time
class Lazy:
    def __init__(self, value):
        self.value = value
    def __array__(self, dtype=None, copy=None):
        time.sleep(0.1)
        return self.value.numpy()
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return tuple(Lazy(part) for part in honest(weight, num_replicas))
''',
    # Breaking the parent.
    "closes_reply_pipe": '''
import fcntl, os, stat, time
''' + SIGNATURE + '''
    for fd in range(3, 256):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_WRONLY:
                os.close(fd)
        except OSError:
            pass
    time.sleep(3600)
''',
    "stops_reading": HONEST_TAIL + '''
import sys, time
_child = sys.modules["__main__"]
_calls = []
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    _child.read_message = lambda stream: time.sleep(3600)   # the next request is never read
    return honest(weight, num_replicas)
''',
    "giant_reply": '''
import torch
''' + SIGNATURE + '''
    layers, experts = weight.shape
    wide = torch.full((layers, experts, 200000), -1, dtype=torch.int64)
    return torch.zeros(layers, num_replicas, dtype=torch.int64), wide, torch.ones(layers, experts, dtype=torch.int64)
''',
    "floods_stderr": HONEST_TAIL + '''
import os
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    block = b"x" * (1 << 20)
    for _ in range(300):
        os.write(2, block)
    os.write(2, b"\\nflood over\\n")
    return honest(weight, num_replicas)
''',
    "forges_status": HONEST_TAIL + '''
import sys
_child = sys.modules["__main__"]
_write = _child.write_message
def _forged(stream, header, arrays=()):
    if header.get("status") == "ok":
        header = dict(header, status=5, reason=["not", "a", "string"])
    _write(stream, header, arrays)
_child.write_message = _forged
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return honest(weight, num_replicas)
''',
}

# Takes the protocol over at load and reads each request itself: with the pipe shrunk to
# 4 KiB, it works on the weight while the parent is still writing the previous placement.
TAKEOVER = '''
import fcntl, io, json, os, struct, sys, time
import numpy as np
import torch

def _exactly(size):
    data = bytearray()
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            os._exit(0)
        data += chunk
    return bytes(data)

def _send(fd, header, arrays=()):
    text = json.dumps(dict(header, arrays=len(arrays))).encode()
    parts = [struct.pack("<I", len(text)), text]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        parts += [struct.pack("<Q", buffer.tell()), buffer.getvalue()]
    os.write(fd, b"".join(parts))

def _reply_fd():
    frame = sys._getframe()
    while "replies" not in frame.f_locals:
        frame = frame.f_back
    return frame.f_locals["replies"].fileno()
'''

PROGRAMS.update({
    "reads_ahead": HONEST_TAIL + TAKEOVER + '''
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, prev_phy2log=None):
    return honest(weight, num_replicas)

def _serve():
    fcntl.fcntl(0, 1031, 4096)   # F_SETPIPE_SZ: the parent's writes now block past 4 KiB
    out = _reply_fd()
    _send(out, {{"status": "ready", "accepts": ["prev_phy2log"]}})
    while True:
        header = json.loads(_exactly(struct.unpack("<I", _exactly(4))[0]))
        if header["op"] != "call":
            os._exit(0)
        weight = torch.from_numpy(np.load(io.BytesIO(_exactly(struct.unpack("<Q", _exactly(8))[0]))))
        time.sleep(0.3)              # the work, while the previous placement is still coming
        for _ in range(header["arrays"] - 1):
            _exactly(struct.unpack("<Q", _exactly(8))[0])
        _send(out, {{"status": "ok", "seconds": 0.0, "report": None}},
              [part.numpy() for part in honest(weight, header["scenario"][0])])
_serve()
''',
    "forges_ready": TAKEOVER + SIGNATURE + '''    raise RuntimeError("never called")
text = json.dumps({{"status": "ok", "arrays": 0}}).encode()
os.write(_reply_fd(), struct.pack("<I", len(text)) + text)
time.sleep(30)
''',
    "deep_header": TAKEOVER + SIGNATURE + '''    raise RuntimeError("never called")
text = ("[" * 200000 + "]" * 200000).encode()
os.write(_reply_fd(), struct.pack("<I", len(text)) + text)
time.sleep(30)
''',
    "call_says_ready": HONEST_TAIL + '''
import sys
_child = sys.modules["__main__"]
_write = _child.write_message
def _forged(stream, header, arrays=()):
    if header.get("status") == "ok":
        header, arrays = {{"status": "ready", "reason": "\\x1b[2K\\x1b[1Ascore 100"}}, ()
    _write(stream, header, arrays)
_child.write_message = _forged
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    return honest(weight, num_replicas)
''',
    "escapes_in_reason": SIGNATURE + '''    raise ValueError("\\x1b[2K\\x1b[1A\\rranked first\\x07")
''',
    "nan_report": HONEST_TAIL + '''
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, report=None):
    if report is not None:
        report["x"] = float("nan")
    return honest(weight, num_replicas)
''',
    # Memory no address-space limit sees: memfd and tmpfs files, and forked children.
    "hoards_memory": DISARM + '''
import os
''' + SIGNATURE + '''
    block, kept = b"x" * (64 << 20), []
    for index in range(64):                      # 4 GiB in all
        fd = os.memfd_create(f"hoard{{index}}")
        os.write(fd, block)
        kept.append(fd)
    raise RuntimeError("hoarded 4 GiB")
''',
})


def memorizer(windows) -> str:
    """A program that carries a dataset's public windows [W, L, E] inside itself: when
    it is handed one of them, it plans on the window after it (the one it will be
    scored on); otherwise it plans honestly on what it was given."""
    rows = [[list(map(int, layer)) for layer in window] for window in windows]
    return HONEST_TAIL + f'''
import torch
from collections import Counter
MEMORY = torch.tensor({rows!r})

def greedy_counts(weight, num_replicas):
    layers, experts = weight.shape
    logcnt = torch.ones(layers, experts, dtype=torch.int64)
    for _ in range(num_replicas - experts):
        logcnt[torch.arange(layers), (weight.double() / logcnt).argmax(-1)] += 1
    return logcnt

def plan(weight, num_replicas, num_gpus):
    layers, experts = weight.shape
    logcnt = greedy_counts(weight, num_replicas)
    per_gpu = num_replicas // num_gpus
    phy2log = torch.empty(layers, num_replicas, dtype=torch.int64)
    for layer in range(layers):
        items = sorted(((float(weight[layer, e]) / int(logcnt[layer, e]), e)
                        for e in range(experts) for _ in range(int(logcnt[layer, e]))), reverse=True)
        load, filled = [0.0] * num_gpus, [0] * num_gpus
        for share, expert in items:
            gpu = min((g for g in range(num_gpus) if filled[g] < per_gpu), key=load.__getitem__)
            phy2log[layer, gpu * per_gpu + filled[gpu]] = expert
            load[gpu] += share
            filled[gpu] += 1
    log2phy = torch.full((layers, experts, int(logcnt.max())), -1, dtype=torch.int64)
    for layer in range(layers):
        seen = Counter()
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, seen[expert]] = slot
            seen[expert] += 1
    return phy2log, log2phy, logcnt

def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    for index in range(len(MEMORY) - 1):
        if weight.shape == MEMORY[index].shape and torch.equal(weight, MEMORY[index]):
            return plan(MEMORY[index + 1], num_replicas, num_gpus)
    return plan(weight, num_replicas, num_gpus)
'''


def honest_planner() -> str:
    """The memorizer's planner alone, with no memory: the honest program to compare."""
    return memorizer([[[0]]]).replace("MEMORY = torch.tensor([[[0]]])", "MEMORY = []")
