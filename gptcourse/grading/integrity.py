"""Is the course's code in this kernel still the code on disk? (The grader's tamper check.)

``python -m gptcourse.grade`` runs every canonical graded cell with a fresh copy of
``gptcourse.grading`` imported from disk, and calls :func:`verify` before and after the check. It
catches what a learner's notebook can do to the checks from ordinary Python:

* a file of the package changed on disk (its sha256 differs from the one the grader read);
* a function or class method of ``gptcourse`` replaced or redefined (``gptcourse.attention.attention
  = my_attention`` makes the reference agree with anything): every function and class defined in a
  loaded ``gptcourse`` module must have the same code as a fresh compile of its source file;
* a function of torch, ``torch.nn.functional``, ``torch.Tensor``, ``math`` or ``builtins`` replaced
  by one written in the notebook (``torch.allclose = lambda *a, **k: True``).

It cannot see through code that rewrites the interpreter itself (``sys.settrace``, IPython input
transformers, import hooks): a kernel runs the learner's code, so for submissions you do not trust,
run the grader as a throwaway user or container (see ``gptcourse.grade``).
"""

from __future__ import annotations

import builtins
import hashlib
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PACKAGE = "gptcourse"


class TamperingError(Exception):
    """The course's code in this kernel was changed by the notebook: the check cannot be trusted."""


def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return code.co_code, code.co_names, code.co_varnames, code.co_freevars, consts


def _function_key(fn: Any) -> tuple[Any, ...] | None:
    """A comparable key for a function (following ``functools.wraps``), or None for other objects."""
    for unwrap in ("__func__", "fget"):  # classmethod/staticmethod, property
        if hasattr(fn, unwrap) and not isinstance(fn, types.FunctionType):
            fn = getattr(fn, unwrap)
    if not isinstance(fn, types.FunctionType):
        return None
    inner = getattr(fn, "__wrapped__", None)
    return _code_key(fn.__code__), _function_key(inner) if inner is not None else None


def _compare_namespace(where: str, live: dict[str, Any], fresh: dict[str, Any], module: str) -> list[str]:
    problems = []
    for name, value in fresh.items():
        if isinstance(value, type) and value.__module__ == module:
            current = live.get(name)
            if not isinstance(current, type):
                problems.append(f"{where}.{name} is no longer the course's class")
            else:
                problems += _compare_namespace(f"{where}.{name}", dict(vars(current)), dict(vars(value)), module)
            continue
        key = _function_key(value)
        if key is None or getattr(value, "__module__", module) != module:
            continue
        if _function_key(live.get(name)) != key:
            problems.append(f"{where}.{name} was replaced or redefined")
    for name, value in live.items():  # functions added to the course's classes and modules
        if name not in fresh and getattr(value, "__module__", None) == "__main__":
            problems.append(f"{where}.{name} was added by the notebook")
    return problems


def _fresh_namespace(name: str, path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name, "__file__": str(path), "__builtins__": builtins}
    if path.name == "__init__.py":
        namespace["__path__"] = [str(path.parent)]
    namespace["__package__"] = name if path.name == "__init__.py" else name.rpartition(".")[0]
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


def course_problems() -> list[str]:
    """Functions and classes of loaded ``gptcourse`` modules that differ from their source files."""
    problems = []
    for name, module in sorted(sys.modules.items()):
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        problems += _compare_namespace(name, dict(vars(module)), _fresh_namespace(name, Path(path)), name)
    return problems


def library_problems() -> list[str]:
    """Functions of torch, math and builtins that the notebook replaced with its own."""
    problems = []
    for owner, label in ((torch, "torch"), (F, "torch.nn.functional"), (torch.Tensor, "torch.Tensor"),
                         (torch.nn.Module, "torch.nn.Module"), (math, "math"), (builtins, "builtins")):
        for name in dir(owner):
            try:
                value = getattr(owner, name)
            except Exception:  # lazy attributes that fail to import are nobody's tampering
                continue
            if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
                problems.append(f"{label}.{name} was replaced by the notebook")
    return problems


def file_problems(package_dir: str, hashes: dict[str, str]) -> list[str]:
    """Loaded ``gptcourse`` modules that do not come from ``package_dir`` or whose file differs from
    ``hashes`` (path relative to the folder holding the package -> sha256), as the grader read them."""
    problems = []
    parent = os.path.dirname(os.path.realpath(package_dir))
    for name, module in sorted(sys.modules.items()):
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        path = os.path.realpath(getattr(module, "__file__", None) or "?")
        rel = os.path.relpath(path, parent).replace(os.sep, "/")
        if not path.startswith(os.path.realpath(package_dir) + os.sep):
            problems.append(f"{name} was not imported from the course ({path})")
        elif hashlib.sha256(Path(path).read_bytes()).hexdigest() != hashes.get(rel):
            problems.append(f"{rel} was changed on disk")
    return problems


def verify(package_dir: str | None = None, hashes: dict[str, str] | None = None) -> None:
    """Raise :class:`TamperingError` listing what the notebook changed, if anything. With
    ``package_dir`` and ``hashes``, the package's files must also be the ones the grader read."""
    problems = file_problems(package_dir, hashes or {}) if package_dir else []
    problems += course_problems() + library_problems()
    if problems:
        raise TamperingError("the notebook changed code the checks rely on: " + "; ".join(problems[:5])
                             + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
