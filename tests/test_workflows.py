"""The GitHub Actions workflows (.github/workflows/), which cannot run here: each validates against the
GitHub-workflow schema that check-jsonschema bundles (offline, no download), and each does what the README
promises: test.yml runs the README's test command (the one .ci/run runs) on every push and pull request,
book.yml builds the book with -W on the default branch and deploys it to GitHub Pages, weekly.yml executes
every chapter at the smoke size against the newest PyTorch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = ("test.yml", "book.yml", "weekly.yml")


def _check_jsonschema() -> str:
    found = Path(sys.executable).parent / "check-jsonschema"
    path = str(found) if found.exists() else shutil.which("check-jsonschema")
    if not path:
        message = "check-jsonschema is not installed (pip install -e '.[test]')"
        if os.environ.get("GPTCOURSE_REQUIRE_DATA") == "1":
            pytest.fail(message + "; GPTCOURSE_REQUIRE_DATA=1 (CI) forbids skipping", pytrace=False)
        pytest.skip(message)
    return path


def validate(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with its bundled (vendored) GitHub-workflow schema: no network."""
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    if True in workflow:  # YAML 1.1 reads the key `on` as a boolean
        workflow["on"] = workflow.pop(True)
    return workflow


def run_lines(workflow: dict) -> list[str]:
    """Every command line of every `run:` step, in order, continuation lines joined."""
    lines = []
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            text = re.sub(r"\\\n\s*", " ", step.get("run", ""))
            lines += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def uses(workflow: dict) -> list[str]:
    return [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]


def readme_test_command() -> str:
    """The test command of the README's "The two commands" block (its comment cut off)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The two commands.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md: no bash block under 'The two commands'"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    tests = [c for c in commands if re.fullmatch(r"make test\b.*", c)]
    assert len(tests) == 1, f"README.md: expected one test command, found {tests}"
    return tests[0]


def test_the_three_workflows_exist():
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_validates_against_the_github_schema(name):
    result = validate(WORKFLOWS / name)
    assert result.returncode == 0, f"{name} is not a valid workflow:\n{result.stdout}\n{result.stderr}"


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    """The check is not vacuous: a misspelt trigger and a job without runs-on fail it."""
    broken = tmp_path / "broken.yml"
    broken.write_text("name: broken\non:\n  pussh:\njobs:\n  test:\n    steps:\n      - run: make test\n")
    result = validate(broken)
    assert result.returncode != 0, result.stdout
    ok = (WORKFLOWS / "test.yml").read_text(encoding="utf-8")
    no_steps = tmp_path / "no_steps.yml"
    no_steps.write_text(ok.replace("    steps:", "    stepz:"))
    assert validate(no_steps).returncode != 0


def test_test_yml_runs_the_readme_test_command_as_ci_does():
    command = readme_test_command()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert command in ci, f".ci/run does not run the README's test command {command!r}"
    workflow = load("test.yml")
    triggers = workflow["on"]
    assert "push" in triggers and "pull_request" in triggers, "test.yml must run on every push and pull request"
    assert isinstance(triggers["push"], dict | type(None)) and not (triggers["push"] or {}).get("branches")
    lines = run_lines(workflow)
    assert command in lines, f"test.yml does not run the README's test command {command!r}: {lines}"
    # CPU torch before the project, as .ci/run does, so that the project's range installs no CUDA build
    torch_at = next(i for i, line in enumerate(lines) if re.search(r"pip install .*\btorch\b", line))
    project_at = next(i for i, line in enumerate(lines) if 'pip install -q -e ".[test,book]"' in line)
    assert "download.pytorch.org/whl/cpu" in lines[torch_at] and torch_at < project_at < lines.index(command)
    # online: none of .ci/run's offline paths
    text = (WORKFLOWS / "test.yml").read_text(encoding="utf-8")
    for offline in ("GPTCOURSE_DATA_DIR", "TIKTOKEN_CACHE_DIR", "shared/"):
        assert offline not in text, f"test.yml must not use the offline path {offline}"
    assert workflow["jobs"]["test"]["env"]["GPTCOURSE_REQUIRE_DATA"] == "1"  # a missing asset fails, never skips


def test_book_yml_builds_with_warnings_as_errors_and_deploys_to_pages():
    workflow = load("book.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert workflow["on"]["push"]["branches"] == [config["repository"]["branch"]], "only the default branch"
    lines = run_lines(workflow)
    build = [line for line in lines if line.startswith(("make book", "jupyter-book build"))]
    assert len(build) == 1, lines
    if build[0].startswith("make book"):  # make book's recipe is the -W build
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        recipe = re.search(r"^book:\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe and "jupyter-book build -W" in recipe.group(1)
    else:
        assert " -W" in build[0]
    steps = uses(workflow)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in steps)
    assert any(u.startswith("actions/deploy-pages@") for u in steps)
    upload = next(
        s for job in workflow["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("actions/upload-")
    )
    assert upload["with"]["path"] == "_build/html"
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    assert workflow["jobs"]["deploy"]["environment"]["name"] == "github-pages"
    assert workflow["jobs"]["deploy"]["needs"] == "build"


def test_weekly_yml_executes_every_chapter_against_the_newest_torch():
    workflow = load("weekly.yml")
    assert workflow["on"]["schedule"] and all("cron" in s for s in workflow["on"]["schedule"])
    job = next(iter(workflow["jobs"].values()))
    assert job["env"]["GPTCOURSE_SIZE"] == "smoke"
    lines = run_lines(workflow)
    torch_line = next(line for line in lines if re.search(r"pip install .*\btorch\b", line))
    assert "--upgrade" in torch_line and "==" not in torch_line, "the newest torch, never a pinned one"
    pytest_line = next(line for line in lines if "-m pytest" in line)
    assert "--nbval-lax" in pytest_line and re.search(r"\bchapters\b", pytest_line)
