"""The box a student's kernel runs in while it is graded.

Two modes, chosen by :func:`choose` (the grader prints which one it used):

``isolated`` (the grader runs as root, with ``bwrap`` from the ``bubblewrap`` package and
``setpriv``/``prlimit`` from util-linux): the kernel runs in its own PID namespace (when the kernel
stops, every process it started dies, also those that called ``setsid``), sees the whole file
system read-only except its private working directory and a private ``/tmp``, runs as an
unprivileged user (so ``RLIMIT_NPROC`` and file permissions bind), and under resource limits.

``basic`` (anything else): the kernel runs as the grader's user under the same resource limits, in
its own process group with a private HOME and working directory. It can write wherever that user
can (site-packages of a user-owned environment, say) and a process that leaves its group outlives
it. The grader still decides every score in its own process, so a kernel cannot change a score; it
could only disturb the *next* notebook's kernel, which the grader checks for start-up files. For
classes you do not trust, use isolated mode (or a container; see the README).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import sys
from pathlib import Path

SANDBOX_UID = 65534  # "nobody": owns nothing, so the kernel can write only its own folder


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one kernel (``setrlimit``)."""

    cpu_seconds: int = 1800
    memory_bytes: int = 8 * 2**30
    file_bytes: int = 256 * 2**20
    processes: int = 256  # threads count too
    open_files: int = 1024

    def prlimit(self) -> list[str]:
        return [
            "prlimit",
            f"--cpu={self.cpu_seconds}",
            f"--as={self.memory_bytes}",
            f"--fsize={self.file_bytes}",
            f"--nproc={self.processes}",
            f"--nofile={self.open_files}",
            "--",
        ]


@dataclasses.dataclass(frozen=True)
class Sandbox:
    mode: str  # isolated | basic
    why: str  # one line for the grader's console
    limits: Limits = Limits()

    @property
    def uid(self) -> int | None:
        return SANDBOX_UID if self.mode == "isolated" else None

    def command(self, kernel: list[str], workdir: Path, course: Path) -> list[str]:
        """The command line that runs ``kernel`` in this box, with ``workdir`` writable, ``course``
        (the grader's copy of the package) read-only, and this interpreter reachable."""
        limited = self.limits.prlimit() + kernel if shutil.which("prlimit") else kernel
        if self.mode != "isolated":
            return limited
        box = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
        box += _reachable(interpreter_paths(), SANDBOX_UID)
        for parent in sorted({str(course.parent), str(workdir.parent)}):  # passable, not listable
            box += ["--perms", "0711", "--dir", parent]
        box += [
            "--ro-bind",
            str(course),
            str(course),
            "--bind",
            str(workdir),
            str(workdir),
            "--chdir",
            str(workdir),
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",
            # the kernel polls its parent pid, which a PID namespace hides; --die-with-parent does that job
            "--unsetenv",
            "JPY_PARENT_PID",
            "--",
        ]
        drop = [
            "setpriv",
            f"--reuid={SANDBOX_UID}",
            f"--regid={SANDBOX_UID}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
        return box + drop + limited


def choose(require_isolation: bool = False) -> Sandbox:
    """The strongest mode this machine allows; with ``require_isolation``, raise instead of
    falling back to basic."""
    missing = [tool for tool in ("bwrap", "setpriv", "prlimit") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        why = "the grader is not running as root, so it cannot run kernels as another user"
    elif missing:
        why = f"{', '.join(missing)} not found (install the bubblewrap and util-linux packages)"
    elif not _bwrap_works():
        why = "bwrap is installed but cannot create namespaces here"
    else:
        return Sandbox(
            "isolated",
            "kernels run as an unprivileged user in their own PID namespace, with a "
            "read-only file system except their own folder",
        )
    if require_isolation:
        raise RuntimeError(f"isolated grading is not possible: {why}")
    return Sandbox("basic", f"{why}; kernels run as this user under resource limits (see gptcourse.grading.sandbox)")


def _bwrap_works() -> bool:
    import subprocess

    try:
        done = subprocess.run(
            ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--", "true"], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _reachable(paths: list[Path], uid: int) -> list[str]:
    """bwrap arguments that let ``uid`` reach ``paths`` whose ancestors it cannot traverse (a
    Python under ``/root``, mode 700): a fresh tmpfs over the closed ancestor, with the needed
    child bound back read-only."""
    args: list[str] = []
    covered: set[Path] = set()
    for path in paths:
        path = Path(os.path.realpath(path))
        for depth in range(1, len(path.parts)):
            ancestor = Path(*path.parts[:depth])
            mode = ancestor.stat().st_mode
            if ancestor.stat().st_uid != uid and not mode & stat.S_IXOTH:
                child = Path(*path.parts[: depth + 1])
                if ancestor not in covered:
                    args += ["--tmpfs", str(ancestor)]
                    covered.add(ancestor)
                if child not in covered:
                    args += ["--ro-bind", str(child), str(child)]
                    covered.add(child)
                break
    return args


def interpreter_paths() -> list[Path]:
    """What a kernel needs to reach: this interpreter and its environment."""
    return [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix)]
