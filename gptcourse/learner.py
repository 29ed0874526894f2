"""The learner's own modules: written in one lab, used by the next, with the package as the fallback.

A lab that asks for a reusable piece (the attention module, the block, the GPT, the training loop)
has the learner write it in a ``%%writefile`` cell that saves ``learner/NAME.py`` in a work folder,
then imports it with :func:`load`::

    from gptcourse.learner import learner_dir, load
    LEARNER = learner_dir()          # prints where the files go

    %%writefile "{LEARNER}/attention.py"
    ...                              # the learner's class

    MultiHeadAttention = load("attention").MultiHeadAttention

A later lab builds on it with :func:`use`, which falls back to the package's version (and says so)
when the file is absent, unfinished (it still raises ``NotImplementedError``) or does not import::

    MultiHeadAttention = use("attention", "MultiHeadAttention", gptcourse.attention.MultiHeadAttention, lab="Lab 6")

The learner's files can use each other the same way (``learner/block.py`` calls ``use("attention", ...)``),
so the capstone runs on every piece the learner wrote, and on the package's for the ones they skipped.

Where the work folder is (:func:`work_dir`): ``$GPTCOURSE_WORK`` when set; in Colab, where every
notebook runs on a fresh machine, a folder in the learner's Google Drive (mounted on first use), so a
module written in Lab 6 is still there in Lab 7; elsewhere ``~/gptcourse-work``. Classes are imported
from files rather than defined in the notebook because ``inspect`` (and ``torch.save`` of a model
class, and the grader's source checks) cannot find the source of a class defined in a notebook cell.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

WORK_ENV = "GPTCOURSE_WORK"
PACKAGE = "learner"  # the learner's files are the modules learner.NAME
COLAB_DRIVE = Path("/content/drive")
UNFINISHED = "raise NotImplementedError"


def _in_colab() -> bool:
    return "google.colab" in sys.modules


def _colab_drive_folder() -> Path | None:
    """The course's folder in the learner's Google Drive, mounting the Drive if needed (Colab asks
    the learner to allow it); None when it cannot be mounted."""
    my_drive = COLAB_DRIVE / "MyDrive"
    if not my_drive.is_dir():
        try:
            from google.colab import drive  # type: ignore[import-not-found]

            drive.mount(str(COLAB_DRIVE))
        except Exception as err:  # declined, or no Drive: the files then last as long as this machine
            print(f"Google Drive is not mounted ({err}); your modules last only as long as this Colab machine.")
            return None
    return my_drive / "gptcourse-work"


def work_dir() -> Path:
    """The folder the learner's modules (and the capstone's checkpoints) are saved in."""
    if os.environ.get(WORK_ENV):
        return Path(os.environ[WORK_ENV]).expanduser()
    if _in_colab():
        return _colab_drive_folder() or Path("/content/gptcourse-work")
    return Path.home() / "gptcourse-work"


def learner_dir(quiet: bool = False) -> Path:
    """Create ``work_dir()/learner`` (the package of the learner's modules), make it importable and
    return it. Prints where it is, so the learner knows where their files live."""
    root = work_dir()
    folder = root / PACKAGE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create the folder for your modules, {folder} ({err}); set {WORK_ENV} to a folder you can write"
        ) from err
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if not quiet:
        print(f"your modules are saved in {folder} (set {WORK_ENV} to choose another folder)")
    return folder


def path_of(module: str) -> Path:
    """Where the learner's module ``module`` (e.g. ``"attention"``) is saved."""
    return work_dir() / PACKAGE / f"{module}.py"


def _forget_learner_modules() -> None:
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def load(module: str) -> ModuleType:
    """Import the learner's ``learner/<module>.py`` afresh (after its ``%%writefile`` cell ran again,
    the new code is the one used; so are the learner's other modules it imports)."""
    path = path_of(module)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the %%writefile cell that saves it first")
    learner_dir(quiet=True)
    _forget_learner_modules()
    return importlib.import_module(f"{PACKAGE}.{module}")


def use(module: str, name: str, fallback: Any, lab: str = "an earlier lab", quiet: bool = False) -> Any:
    """The learner's ``name`` from ``learner/<module>.py`` if it is there and finished, else
    ``fallback`` (the package's version); prints which one is in use and why.

    A module is unfinished while its source still contains ``raise NotImplementedError`` (an
    exercise not done yet). One that fails to import, or lacks ``name``, falls back with the error
    printed: a mistake in an earlier lab should not stop the learner from doing this one."""
    path = path_of(module)
    fallback_name = f"{getattr(fallback, '__module__', '?')}.{getattr(fallback, '__qualname__', repr(fallback))}"

    def fall_back(why: str) -> Any:
        if not quiet:
            print(f"{name}: using the package's {fallback_name} ({why})")
        return fallback

    if not path.exists():
        return fall_back(f"{path.name} not found in {path.parent}; {lab} writes it")
    if UNFINISHED in path.read_text(encoding="utf-8"):
        return fall_back(f"your {path.name} is not finished: it still raises NotImplementedError")
    learner_dir(quiet=True)
    try:
        value = getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
    except Exception as err:  # the learner's file is broken: say so, and go on with the package's
        return fall_back(f"your {path.name} does not import: {type(err).__name__}: {err}")
    if not quiet:
        print(f"{name}: using yours, from {path}")
    return value
