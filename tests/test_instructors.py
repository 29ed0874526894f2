"""The instructors' page (book/instructors.md) gives commands that exist: the grader's options are the
parser's, every one of them in its table; each ``python -m gptcourse.X`` is a module, each labs subcommand
is one; the page is in the table of contents after the setup page; CHANGELOG.md names the course version."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest
import yaml

import gptcourse
from gptcourse import grade

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "instructors.md"


def _code_lines(md: str) -> list[str]:
    """The lines of the page's fenced code blocks, continuation lines joined."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", md, re.S)
    return [line.strip() for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()]


def _grade_options() -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        grade.main(["--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", out.getvalue())) - {"--help"}


def test_the_grader_options_on_the_page_are_the_parsers():
    md = PAGE.read_text(encoding="utf-8")
    options = _grade_options()
    assert {"--csv", "--timeout", "--heldout", "--require-isolation"} <= options
    table = set(re.findall(r"^\| `(--[a-z-]+)", md, re.M))
    assert table == options, f"the options table differs from the grader's: {sorted(table ^ options)}"
    commands = [line for line in _code_lines(md) if "gptcourse.grade" in line]
    assert len(commands) >= 3
    for line in commands:
        used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", line.split("gptcourse.grade", 1)[1]))
        assert used <= options, f"{line!r}: not options of python -m gptcourse.grade: {sorted(used - options)}"


def test_every_course_command_on_the_page_exists():
    md = PAGE.read_text(encoding="utf-8")
    modules = set(re.findall(r"python -m (gptcourse(?:\.\w+)*)", md))
    assert {"gptcourse.grade", "gptcourse.labs"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{module} is not a module"
    sub = set(re.findall(r"python -m gptcourse\.labs (\w+)", md))
    assert sub and sub <= {"build", "check", "count"}, sub
    # the statuses the page explains are the grader's
    statuses = set(re.findall(r"^\| `([a-z ]+)` \|", md, re.M))
    documented = re.search(r"status: str  # (.*)", Path(grade.__file__).read_text(encoding="utf-8"))
    assert documented
    assert {s.strip() for s in documented.group(1).split("|")} | {"tampered"} == statuses
    # the tag the examples pin is a release's; on a release, this one's
    tags = set(re.findall(r"--branch (v[\w.]+)", md)) | set(re.findall(r"/blob/(v[\w.]+)/", md))
    assert tags and all(re.fullmatch(r"v\d+\.\d+\.\d+", t) for t in tags), tags
    if re.fullmatch(r"\d+\.\d+\.\d+", gptcourse.__version__):
        assert tags == {f"v{gptcourse.__version__}"}, f"the page pins {tags}, the course is {gptcourse.__version__}"


def test_the_page_follows_the_setup_page_in_the_book():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [c["file"] for part in toc["parts"] for c in part.get("chapters", [])]
    assert files.index("book/instructors") == files.index("book/setup") + 1


def test_the_changelog_names_the_course_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"**{gptcourse.__version__}**" in changelog, f"CHANGELOG.md must name the version, {gptcourse.__version__}"
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert headings[0] == "Unreleased"
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", h) for h in headings[1:]), headings
