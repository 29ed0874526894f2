"""One install for a learner: every module that a chapter, lab or solution imports, and every module the
package itself imports, is provided by the package's dependencies or its ``course`` extra
(``pip install "gptcourse[course]"``, the command of book/setup.md).

Imports are read from the notebooks' code cells (IPython magics and shell lines left out, the body of a
``%%writefile`` cell read as the Python file it writes); the standard library and ``gptcourse`` itself
need nothing. A module whose distribution is named differently is in :data:`DISTRIBUTIONS`; a new
import that no requirement provides fails here, with the notebooks that import it."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIRS = ("chapters", "labs", "solutions")
EXTRA = "course"

# Top-level module -> the distributions that provide it, where the names differ (a module not listed
# here is provided by the distribution of the same name). IPython comes with ipykernel (Jupyter's
# kernel), jupyter_client with nbclient and ipykernel.
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "IPython": ("ipython", "ipykernel"),
    "jupyter_client": ("jupyter-client", "nbclient", "ipykernel"),
    "tiktoken_ext": ("tiktoken",),
    "yaml": ("pyyaml",),
    "PIL": ("pillow",),
    "sklearn": ("scikit-learn",),
}
# Modules that no install provides, and why that is fine.
EXEMPT = {
    "google": "google.colab exists only in Colab, which provides it (gptcourse.learner tests for it first)",
}


def _python_of(source: str) -> str:
    """A code cell as Python: magics (``%...``, ``%%...``) and shell lines (``!...``) left out, so the
    body of a ``%%writefile`` cell is read as the module it saves."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def imported_modules(source: str) -> set[str]:
    """The top-level names of the absolute imports in Python ``source``."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n != "gptcourse" and n != "__future__"}


def notebook_imports(paths) -> dict[str, set[str]]:
    """Third-party module -> the notebooks (relative paths) whose code cells import it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            try:
                names = imported_modules(_python_of(cell.source))
            except SyntaxError as err:
                pytest.fail(f"{path}: code cell {index} is not Python once its magics are left out: {err}")
            where = Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else Path(path)
            for name in third_party(names):
                found.setdefault(name, set()).add(str(where))
    return found


def package_imports() -> dict[str, set[str]]:
    """Third-party module -> the package's files that import it (anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "gptcourse").rglob("*.py")):
        for name in third_party(imported_modules(path.read_text(encoding="utf-8"))):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def requirements(extra: str) -> set[str]:
    """The canonical names of the distributions that ``pip install "gptcourse[EXTRA]"`` asks for directly:
    the dependencies and the extra's requirements (an extra naming ``gptcourse[other]`` adds ``other``'s)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        pytest.fail(f'pyproject.toml has no "{extra}" extra ([project.optional-dependencies])')
    names, todo, seen = set(), [*project["dependencies"]], set()
    todo += extras[extra]
    while todo:
        req = Requirement(todo.pop())
        name = canonicalize_name(req.name)
        if name == "gptcourse":
            for other in set(req.extras) - seen:
                seen.add(other)
                todo += extras[other]
        else:
            names.add(name)
    return names


def unprovided(imports: dict[str, set[str]], provided: set[str]) -> dict[str, set[str]]:
    """The imported modules that none of the ``provided`` distributions provides."""
    missing = {}
    for module, where in imports.items():
        if module in EXEMPT:
            continue
        dists = {canonicalize_name(d) for d in DISTRIBUTIONS.get(module, (module,))}
        if not dists & provided:
            missing[module] = where
    return missing


def _report(missing: dict[str, set[str]]) -> str:
    return "; ".join(
        f"{module} (imported by {', '.join(sorted(where)[:4])}{', ...' if len(where) > 4 else ''}; "
        f"add its distribution to the {EXTRA!r} extra in pyproject.toml, or to DISTRIBUTIONS in {Path(__file__).name} "
        "if it is named differently)"
        for module, where in sorted(missing.items())
    )


def _notebooks() -> list[Path]:
    return sorted(p for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))


def test_every_notebook_import_is_in_the_course_extra():
    notebooks = _notebooks()
    assert len(notebooks) >= 3 * 16, "the chapters, labs and solutions were not found"
    imports = notebook_imports(notebooks)
    assert {"torch", "transformers"} <= imports.keys(), "the notebooks' imports were not read"
    missing = unprovided(imports, requirements(EXTRA))
    assert not missing, "not installed by pip install gptcourse[course]: " + _report(missing)


def test_every_package_import_is_in_the_course_extra():
    """The chapters call the package, which imports more (IPython for computed sentences, nbclient for the
    grader, transformers for GPT-2's weights): the same one install must provide it."""
    imports = package_imports()
    assert "torch" in imports
    missing = unprovided(imports, requirements(EXTRA))
    assert not missing, "not installed by pip install gptcourse[course]: " + _report(missing)


def test_a_new_import_fails(tmp_path):
    """The check is not vacuous: a notebook that imports a module no requirement provides is reported, with
    its path; magics, the standard library and the package itself are not."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%matplotlib inline\n!pip list\nimport os, json\nfrom gptcourse import hardware"),
        nbformat.v4.new_code_cell('%%writefile "{LEARNER}/extra.py"\nimport pandas as pd\nfrom torch import nn'),
        nbformat.v4.new_code_cell("from transformers import GPT2LMHeadModel\nfrom . import local  # relative"),
    ]
    path = tmp_path / "new_chapter.ipynb"
    nbformat.write(nb, path)
    imports = notebook_imports([path])
    assert imports.keys() == {"pandas", "torch", "transformers"}
    missing = unprovided(imports, requirements(EXTRA))
    assert missing.keys() == {"pandas"} and "new_chapter.ipynb" in _report(missing)
    # without the extra, Chapter 8's transformers is missing: the base dependencies alone do not suffice
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert "transformers" in unprovided(imports, base)


def test_the_module_map_is_true_where_installed():
    """Each distribution in DISTRIBUTIONS provides its module, or depends on the one that does (checked for
    what is installed here)."""
    providers = importlib.metadata.packages_distributions()
    for module, dists in DISTRIBUTIONS.items():
        if importlib.util.find_spec(module) is None:
            continue
        direct = {canonicalize_name(d) for d in providers.get(module, [])}
        for dist in dists:
            try:
                requires = importlib.metadata.requires(dist) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            needs = {canonicalize_name(Requirement(r).name) for r in requires if "extra ==" not in r}
            assert canonicalize_name(dist) in direct or direct & needs, f"{dist} does not provide {module}"


def test_setup_page_gives_the_one_install():
    setup = (ROOT / "book" / "setup.md").read_text(encoding="utf-8")
    assert re.search(r'pip install -e "\.\[course\]"', setup), "book/setup.md must give the one install command"
