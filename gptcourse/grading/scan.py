"""What the grader reads in a student's exercise code without running it: uses of references an
exercise forbids, and code that is a near-verbatim copy of the solution. Both become flags for
the instructor to look at; neither changes a score by itself (a forbidden reference also raises
while the answer runs, so an answer that depends on one fails anyway)."""

from __future__ import annotations

import ast
import difflib
import io
import re
import tokenize
from typing import TYPE_CHECKING, Any

from gptcourse import labs

if TYPE_CHECKING:
    from gptcourse.grade import Solution

COPY_RATIO = 0.95  # token similarity from which exercise code counts as a copy of the solution
COPY_MIN_TOKENS = 20  # shorter solutions have too few ways to be written to tell


def _tokens(source: str) -> list[str]:
    """The code's tokens without comments, blank lines and indentation (renaming is not undone)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source.split()


# A lab's reusable exercise is a cell that saves the learner's module (gptcourse.learner): its first
# line is this magic, the rest is Python, read like any other exercise code.
WRITEFILE = re.compile(r'%%writefile "\{LEARNER\}/\w+\.py"')


def python_of(source: str) -> str:
    """The Python a cell holds: a learner-module cell (``%%writefile "{LEARNER}/NAME.py"``) without
    its first line, any other cell as it is."""
    first, _, rest = source.partition("\n")
    return rest if WRITEFILE.fullmatch(first.strip()) else source


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(python_of(source))
    except SyntaxError:
        return None


def _aliases(trees: list[ast.Module]) -> dict[str, str]:
    """Local name -> dotted path, from every import of the notebook."""
    names: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def used_names(tree: ast.Module, aliases: dict[str, str]) -> set[str]:
    """Every dotted path the code refers to, with imported names resolved."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            used |= {f"{node.module}.{a.name}" for a in node.names}
        dotted = _dotted(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if dotted:
            head, _, rest = dotted.partition(".")
            used.add(f"{aliases[head]}.{rest}".rstrip(".") if head in aliases else dotted)
    return used


def _defines(tree: ast.Module | None) -> set[str]:
    if tree is None:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}


def defines(source: str) -> set[str]:
    """The functions and classes a cell defines at its top level."""
    return _defines(_parse(source))


def copy_ratio(student_cell: str, solution_cell: str) -> float:
    """How much of what the student wrote in an exercise cell equals the solution's code: the
    student's tokens minus those the lab gave (signature, docstring), against the solution's block."""
    given = _tokens(labs.strip_solutions(solution_cell).replace("raise NotImplementedError()", ""))
    theirs = _tokens(student_cell)
    matcher = difflib.SequenceMatcher(a=given, b=theirs, autojunk=False)
    written = [t for tag, _, _, j1, j2 in matcher.get_opcodes() if tag in ("insert", "replace") for t in theirs[j1:j2]]
    block = _tokens(solution_code(solution_cell))
    if len(block) < COPY_MIN_TOKENS or not written:
        return 0.0
    return difflib.SequenceMatcher(a=block, b=written, autojunk=False).ratio()


def solution_code(source: str) -> str:
    """The lines of a solution cell between its BEGIN and END SOLUTION markers."""
    out, inside = [], False
    for line in source.splitlines():
        if line.strip() == labs.BEGIN:
            inside = True
        elif line.strip() == labs.END:
            inside = False
        elif inside:
            out.append(line)
    return "\n".join(out)


def parse_cells(student: Any) -> tuple[list[Any], list[ast.Module | None], dict[str, str]]:
    """A notebook's code cells, their syntax trees (None where a cell does not parse) and the
    names its imports bind: what :func:`flags` and :func:`suspicious` read, parsed once."""
    cells = [c for c in student.cells if c.get("cell_type") == "code"]
    trees = [_parse(c.get("source", "")) for c in cells]
    return cells, trees, _aliases([t for t in trees if t is not None])


def flags(
    parsed: tuple[list[Any], list[ast.Module | None], dict[str, str]], solution: Solution
) -> dict[str, list[str]]:
    """Exercise id -> what the instructor should look at in the student's exercise code
    (``parsed`` from :func:`parse_cells`)."""
    cells, trees, aliases = parsed
    names = {e.spec.name: e.spec.id for e in solution.exercises}
    out: dict[str, list[str]] = {}
    for cell, tree in zip(cells, trees):
        owner = solution.blocks.get(cell.get("id"))
        exercises = {names[n] for n in _defines(tree) if n in names} | ({owner[0]} if owner else set())
        if not exercises or tree is None:
            continue
        used = used_names(tree, aliases)
        for e in solution.exercises:
            if e.spec.id in exercises:
                for ref in e.spec.forbidden:
                    if ref in used:
                        out.setdefault(e.spec.id, []).append(f"uses {ref}")
        if owner:
            ratio = copy_ratio(cell.get("source", ""), owner[1])
            if ratio >= COPY_RATIO:
                out.setdefault(owner[0], []).append(f"a near-verbatim copy of the solution ({ratio:.0%} alike)")
    return {k: sorted(set(v)) for k, v in out.items()}


# Names whose use in a student's cell the instructor should see: the grading machinery, hooks into
# the interpreter or IPython, and ways to run code that a reader (or this scan) cannot see.
SUSPICIOUS = {
    "gptcourse.grading.harness": "the grading harness",
    "gptcourse.grading.collect": "the grader's collector",
    "gptcourse.grading.spec": "the exercise specs",
    "gptcourse.grade": "the grader",
    "sys.settrace": "a tracer",
    "sys.setprofile": "a profiler hook",
    "threading.settrace": "a tracer",
    "sys.meta_path": "an import hook",
    "sys.path_hooks": "an import hook",
    "sys.modules": "the module table",
    "builtins": "the builtins",
    "__builtins__": "the builtins",
    "signal.signal": "a signal handler",
    "ctypes": "raw memory access",
    "gc.get_referrers": "the garbage collector",
    "os.setsid": "a detached process",
    "os.fork": "a forked process",
    "subprocess": "a subprocess",
    "threading.Thread": "a thread",
    "exec": "exec",
    "eval": "eval",
    "compile": "compile",
    "__import__": "__import__",
    "importlib": "importlib",
    "get_ipython": "IPython's internals",
}


def suspicious(
    parsed: tuple[list[Any], list[ast.Module | None], dict[str, str]], solution_sources: set[str]
) -> list[str]:
    """What in the student's own cells (those not identical to a cell of the solution) touches the
    grading machinery or the interpreter: flags for a reader, not verdicts (``parsed`` from
    :func:`parse_cells`)."""
    found = set()
    cells, trees, aliases = parsed
    for cell, tree in zip(cells, trees):
        if cell.get("source", "").strip() in solution_sources:
            continue
        # the lab's own %%writefile line is not a magic to flag, and the file's lines are not magics
        if any(line.lstrip().startswith(("%", "!")) for line in python_of(cell.get("source", "")).splitlines()):
            found.add("runs magics or shell commands")
        if tree is None:
            continue
        for name in used_names(tree, aliases):
            for prefix, what in SUSPICIOUS.items():
                if name == prefix or name.startswith(prefix + "."):
                    found.add(f"touches {what} ({prefix})")
    return sorted(found)
