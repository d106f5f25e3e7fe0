"""Where an evaluated program runs, and what it can reach there.

Two kinds of isolation, named in every record that `evaluate` writes:

- `namespaces` (the default): the child runs under bubblewrap (`bwrap`) in new user,
  pid, network, ipc, uts and cgroup namespaces, with every capability dropped and
  further user namespaces disabled. Its mount tree holds only the system's libraries
  and the Python installation (read-only, with the harness's package and data masked
  by empty folders wherever they lie inside it), the program file and the child
  script (read-only, under /sandbox), a fresh /proc of its own pid namespace, a
  minimal /dev, and an empty tmpfs working folder /work of a capped size. There is no
  network but a loopback device, no other process, no home, no checkout. When the
  sandbox's first process dies (a timeout kills it; `--die-with-parent` kills it when
  the harness dies for any reason), the kernel kills everything in its pid namespace.
- `process`: the confined child process alone (its audit hook and rlimits). Python's
  audit hooks are no sandbox, so such a result is marked as not isolated.

In both, the child caps its own address space, CPU time, file size, open files and
core dumps with rlimits before the program is loaded (sandbox_child.py), and the child
and all it starts join cgroups of their own, where the machine lets the harness make
them: a pids cgroup caps their processes and threads (RLIMIT_NPROC does not bind
processes that run as root, so it is only the fallback), and a memory cgroup caps all
the memory they hold, tmpfs files, shared memory and memfd included, which the
per-process address-space limit does not see.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from eplb_bench.data.catalog import datasets_dir

ISOLATIONS = ("namespaces", "process")
CHILD = Path(__file__).with_name("sandbox_child.py")
# Inside the sandbox: the read-only folder with the child script and the program, and
# the working folder (also HOME and TMPDIR).
SANDBOX_FOLDER = "/sandbox"
WORK_FOLDER = "/work"
# System folders every dynamically linked Python needs; merged-/usr symlinks are kept as links.
SYSTEM_FOLDERS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
_cgroup_names = itertools.count()


class IsolationError(RuntimeError):
    """The isolation asked for cannot be had on this machine; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """What one evaluation child may use (all enforced by the kernel)."""

    memory_bytes: int          # address space beyond what the child maps after importing torch
    cpu_seconds: int           # CPU time of the child over its whole life (RLIMIT_CPU)
    file_bytes: int = 64 << 20  # largest file it may write (RLIMIT_FSIZE)
    work_bytes: int = 64 << 20  # size of its tmpfs working folder (namespaces only)
    processes: int = 64        # processes and threads (pids cgroup, else RLIMIT_NPROC)
    open_files: int = 256      # open file descriptors (RLIMIT_NOFILE)

    def as_dict(self) -> dict:
        return asdict(self)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=None)
def namespaces_unavailable() -> str | None:
    """None when bubblewrap can start a sandbox here, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"namespaces need Linux, this is {sys.platform}"
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap)"
    command = [bwrap, *namespace_flags(), *mount_flags(), "--", sys.executable, "-I", "-c", "pass"]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start: {exc}"
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"bwrap could not make a sandbox here: {last}"
    return None


def python_roots() -> list[str]:
    """Folders of the Python installation the child needs: prefixes and package folders."""
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, paths["stdlib"], paths["platstdlib"],
             paths["purelib"], paths["platlib"], *site.getsitepackages(),
             str(Path(os.path.realpath(sys.executable)).parent)}
    real = {os.path.realpath(root) for root in roots if os.path.isdir(root)}
    # Bind each folder at its own path and at the real path behind symbolic links, but
    # not a folder that a bound parent already holds.
    kept = sorted(real | {os.path.abspath(r) for r in roots if os.path.isdir(r)})
    return [root for root in kept if not any(within(root, other) and root != other for other in kept)]


def harness_paths() -> list[str]:
    """The harness's package, its balancers and its data: never visible to a program."""
    package = Path(__file__).resolve().parents[1]   # eplb_bench/, above evaluation/
    found = {os.path.realpath(package), os.path.realpath(datasets_dir())}
    spec = importlib.util.find_spec("eplb_bench_algorithms")
    if spec is not None and spec.submodule_search_locations:
        found.update(os.path.realpath(p) for p in spec.submodule_search_locations)
    for prefix in {sys.prefix, sys.base_prefix}:
        found.add(os.path.realpath(Path(prefix) / "share" / "eplb-bench"))
    if (package.parent / "pyproject.toml").is_file():
        found.add(str(package.parent))   # a source checkout: tests, results, everything
    return sorted(found)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def namespace_flags() -> list[str]:
    return ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
            "--hostname", "eplb-sandbox"]


def mount_flags(work_bytes: int = 1 << 20) -> list[str]:
    """System and Python folders read-only, harness paths masked, fresh /proc, /dev, /work."""
    flags: list[str] = []
    for folder in SYSTEM_FOLDERS:
        if os.path.islink(folder):
            flags += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            flags += ["--ro-bind", folder, folder]
    for name in SYSTEM_FILES:
        flags += ["--ro-bind-try", name, name]
    roots = python_roots()
    for root in roots:
        if not any(within(root, folder) for folder in SYSTEM_FOLDERS if not os.path.islink(folder)):
            flags += ["--ro-bind", root, root]
    visible = roots + [folder for folder in SYSTEM_FOLDERS if os.path.isdir(folder) and not os.path.islink(folder)]
    for hidden in harness_paths():
        if os.path.isdir(hidden) and any(within(hidden, root) for root in visible):
            flags += ["--tmpfs", hidden, "--remount-ro", hidden]
    flags += ["--proc", "/proc", "--dev", "/dev", "--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu",
              "--size", str(work_bytes), "--tmpfs", WORK_FOLDER, "--chdir", WORK_FOLDER]
    return flags


def sandbox_command(program: str, arguments: list[str], environment: dict, limits: Limits) -> list[str]:
    """The bwrap command line that runs the child script on `program` inside namespaces."""
    inside_program = f"{SANDBOX_FOLDER}/{Path(program).name}"
    inside_child = f"{SANDBOX_FOLDER}/{CHILD.name}"
    command = [bwrap_path(), *namespace_flags(), *mount_flags(limits.work_bytes),
               "--ro-bind", str(CHILD), inside_child, "--ro-bind", program, inside_program, "--clearenv"]
    for key, value in environment.items():
        command += ["--setenv", key, value]
    return command + ["--", sys.executable, "-I", inside_child, inside_program, *arguments]


def process_command(program: str, arguments: list[str]) -> list[str]:
    """The plain child process, killed by the kernel if the harness dies (setpriv)."""
    command = [sys.executable, "-I", str(CHILD), program, *arguments]
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


# -- cgroups: processes and memory ---------------------------------------------
# Memory the interpreter, torch and the transfers take besides the program's budget.
INTERPRETER_BYTES = 1 << 30


@dataclass
class Cgroups:
    """The cgroups of one child: controller -> folder ('pids', 'memory'), those that
    could be made. Everything the child starts stays in them."""

    folders: dict

    def command(self, command: list[str]) -> list[str]:
        """`command`, started by a shell that first moves itself into every cgroup."""
        if not self.folders:
            return command
        joins = " && ".join(f"echo $$ > {shlex.quote(os.path.join(folder, 'cgroup.procs'))}"
                            for folder in dict.fromkeys(self.folders.values()))
        return ["/bin/sh", "-c", joins + ' && exec "$@"', "sh", *command]

    def kill(self) -> None:
        """SIGKILL every task left in them (what a plain child may have left behind)."""
        for folder in dict.fromkeys(self.folders.values()):
            for _ in range(50):
                pids = [int(p) for p in _read(os.path.join(folder, "cgroup.procs")).split()]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def memory_exhausted(self) -> bool:
        """Whether the memory cgroup hit its limit (the kernel then kills the child)."""
        folder = self.folders.get("memory")
        if folder is None:
            return False
        counters = _read(os.path.join(folder, "memory.events")) or _read(os.path.join(folder, "memory.oom_control"))
        values = dict(line.split()[:2] for line in counters.splitlines() if len(line.split()) >= 2)
        failures = _read(os.path.join(folder, "memory.memsw.failcnt")).strip() or \
            _read(os.path.join(folder, "memory.failcnt")).strip() or "0"
        return int(values.get("oom_kill", 0)) > 0 or int(failures) > 0

    def remove(self) -> None:
        for folder in dict.fromkeys(self.folders.values()):
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self.folders = {}


def own_cgroup(controller: str) -> str | None:
    """The folder of this process's cgroup for `controller` (v1), or of its v2 cgroup."""
    for line in _read("/proc/self/cgroup").splitlines():
        number, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return f"/sys/fs/cgroup/{controller}{path}"
        if number == "0" and os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):
            parent = f"/sys/fs/cgroup{path}"
            if controller in _read(os.path.join(parent, "cgroup.subtree_control")).split():
                return parent
    return None


def make_cgroups(processes: int, memory_bytes: int, cpus: list[int] | None = None) -> Cgroups:
    """New cgroups under this process's own: at most `processes` tasks, at most
    `memory_bytes` + INTERPRETER_BYTES of memory (tmpfs, shared memory and memfd
    included, no swap), and with `cpus`, those cores only (a cpuset: the program cannot
    widen it as it can its affinity). A controller whose cgroup cannot be made is left out."""
    limits = {"pids": [("pids.max", str(processes))],
              "memory": [("memory.limit_in_bytes", str(memory_bytes + INTERPRETER_BYTES)),
                         ("memory.memsw.limit_in_bytes", str(memory_bytes + INTERPRETER_BYTES)),
                         ("memory.max", str(memory_bytes + INTERPRETER_BYTES)), ("memory.swap.max", "0")]}
    if cpus:
        parent = own_cgroup("cpuset")
        mems = next((_read(os.path.join(parent, name)).strip() for name in
                     ("cpuset.effective_mems", "cpuset.mems.effective", "cpuset.mems")
                     if parent and os.path.isfile(os.path.join(parent, name))), "")
        # v1 needs the memory nodes written before any task joins; v2 takes the cores alone.
        limits["cpuset"] = ([("cpuset.mems", mems)] if mems else []) + [("cpuset.cpus", ",".join(map(str, cpus)))]
    folders = {}
    name = f"eplb-bench-{os.getpid()}-{next(_cgroup_names)}"
    for controller, settings in limits.items():
        parent = own_cgroup(controller)
        if parent is None or not os.path.isfile(os.path.join(parent, "cgroup.procs")):
            continue
        remove_orphans(parent)
        folder = os.path.join(parent, name)
        try:
            if not os.path.isdir(folder):
                os.mkdir(folder)
            written = 0
            for key, value in settings:
                if os.path.exists(os.path.join(folder, key)):
                    with open(os.path.join(folder, key), "w") as handle:
                        handle.write(value)
                    written += 1
            if not written:
                raise OSError(f"no {controller} limit to set")
        except OSError:
            Cgroups({controller: folder}).remove()
            continue
        folders[controller] = folder
    return Cgroups(folders)


def remove_orphans(parent: str) -> None:
    """Remove the empty cgroups that a killed harness process left under `parent`."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        owner = name.split("-")[2] if name.startswith("eplb-bench-") and name.count("-") == 3 else ""
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""
