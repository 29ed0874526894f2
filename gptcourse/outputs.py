"""Re-execute the chapters and solutions so that their committed outputs come from a real run.

``python -m gptcourse.outputs`` (``make outputs``) runs every notebook of ``chapters/`` and
``solutions/`` (or the ones named) from top to bottom in a fresh kernel, one at a time, at the size
this machine gets (``cpu`` here, ``gpu`` on CUDA; never ``smoke``, which is for tests), and writes
the executed notebook back. Each run's device line is stamped with the package version and the
commit it ran (``git rev-parse``; ``+dirty`` when ``gptcourse/`` has uncommitted changes), so a
reader can tell which code produced the outputs.

A notebook whose committed outputs came from a gpu-size run is never overwritten by a cpu-size
run (``--replace-gpu`` overrides). Labs are not executed: they carry no outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from gptcourse.hardware import COMMIT_ENV, SIZE_ENV, get_size
from gptcourse.labs import ROOT, SETUP_TAG

SIZE_LINE = re.compile(r"device: .*\| size: (?P<size>smoke|cpu|gpu) ")


def committed_size(nb: nbformat.NotebookNode) -> str | None:
    """The size printed by the notebook's setup cell in its committed outputs (None: not executed)."""
    for cell in nb.cells:
        if SETUP_TAG in cell.get("metadata", {}).get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            match = SIZE_LINE.search(text)
            return match["size"] if match else None
    return None


def commit_stamp(root: Path = ROOT) -> str:
    """The short commit of ``root``, with ``+dirty`` when the package has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "gptcourse")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def execute(path: Path, timeout: int, dst: Path | None = None) -> float:
    """Run ``path`` in a fresh kernel in its own folder and write it back; return the seconds it took.

    With ``dst`` the executed notebook is written there instead, also when a cell fails (up to that
    cell: the GPU suite brings back what ran); ``path`` itself is only ever rewritten by a whole run."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=True,
    )
    try:
        client.execute()
    finally:
        if dst is not None:
            nbformat.write(nb, dst)
    if dst is None:
        nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptcourse.outputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter and solution")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--replace-gpu", action="store_true", help="allow replacing gpu-size outputs")
    args = parser.parse_args(argv)
    size = get_size()
    if size == "smoke":
        print(f"{SIZE_ENV}=smoke is for tests; committed outputs come from the cpu or gpu size", file=sys.stderr)
        return 2
    paths = args.notebooks or sorted([*(ROOT / "chapters").glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print("no such notebook: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2
    os.environ[COMMIT_ENV] = commit_stamp()
    print(f"size {size}, commit {os.environ[COMMIT_ENV]}, {len(paths)} notebook(s), one at a time")
    failed = []
    for path in paths:
        name = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        if committed_size(nbformat.read(path, as_version=4)) == "gpu" and size != "gpu" and not args.replace_gpu:
            print(f"  {name}: kept (its outputs are from a gpu-size run)")
            continue
        try:
            print(f"  {name}: {execute(path, args.timeout):.0f} s", flush=True)
        except Exception as err:  # one failing notebook must not stop the others; it is left as it was
            failed.append(path)
            print(f"  {name}: FAILED, left unchanged: {type(err).__name__}: {str(err).splitlines()[-1:]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
