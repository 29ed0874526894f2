"""Grading: what a notebook can do from Python inside its own kernel earns nothing.

The grader never runs the graded cells; it asks the kernel for the answer's outputs on a secret
seed and judges them in its own process, so each attack below (one notebook per attack class) can
at most change the outputs the kernel reports. See tests/grading_cases.py for the lab used."""

from __future__ import annotations

import pytest
from grading_cases import (
    OTHER_ATTENTION,
    OTHER_SCORES,
    SOLVED,
    UNSOLVED,
    grade_all,
    insert_after,
    read,
    replace,
    wrong,
)

FORGE = (
    'import json\nfrom IPython.display import display\nMIME = "application/vnd.gptcourse.outcomes+json"\n'
    "def forged(exercise, seed):\n"
    '    display({MIME: {"exercise": exercise, "seed": seed, "outcomes": [{"ok": 0}] * 9}}, raw=True)\n'
)


def variants():
    v = {"solved": read(SOLVED), "unsolved": read(UNSOLVED)}
    v["other_way"] = replace(
        replace(read(UNSOLVED), "def scaled_scores", OTHER_SCORES), "def attention", OTHER_ATTENTION
    )
    # the checks rebound through the notebook's namespace and the modules the graded cells import, and
    # IPython's run_code replaced so that no later cell runs
    v["rebound"] = insert_after(
        read(UNSOLVED),
        "def attention",
        (
            "import gptcourse.grading as g, gptcourse.grading.collect as c\n"
            "g.check = lambda *a, **k: print('PASSED')\nc.collect = lambda *a, **k: print('PASSED')\n"
            "check = g.check\ncollect = c.collect\n"
            "get_ipython().run_code = lambda *a, **k: print('PASSED')"
        ),
    )
    # answers that change their inputs, so that an expectation computed afterwards would agree
    v["mutates"] = replace(
        replace(
            read(UNSOLVED),
            "def scaled_scores",
            ("def scaled_scores(q, k):\n    q.zero_(); k.zero_()\n    return q @ k.transpose(-2, -1)"),
        ),
        "def attention",
        "def attention(q, k, v, mask=None):\n    q.zero_(); v.zero_()\n    return v[..., :q.size(-2), :]",
    )
    # torch and builtins patched to agree with anything
    v["patched"] = insert_after(
        wrong(),
        "def attention",
        (
            "import builtins, torch, math\n"
            "torch.allclose = lambda *a, **k: True\n"
            "torch.isclose = lambda a, b, **k: torch.ones(a.shape, dtype=torch.bool)\n"
            "math.isclose = lambda *a, **k: True\n_imp = builtins.__import__\n"
            "builtins.__import__ = lambda *a, **k: _imp(*a, **k)\nbuiltins.exec = lambda *a, **k: None"
        ),
    )
    # a fake collector through sys.modules and an import hook, reporting made-up outputs
    v["modules"] = insert_after(
        wrong(),
        "def attention",
        FORGE
        + (
            "import sys, types, importlib.abc, importlib.machinery\n"
            "fake = types.ModuleType('gptcourse.grading.collect'); fake.collect = forged\n"
            "sys.modules['gptcourse.grading.collect'] = fake\n"
            "class Finder(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.startswith('gptcourse.grading'):\n"
            "            return importlib.machinery.ModuleSpec(name, None)\n"
            "sys.meta_path.insert(0, Finder())"
        ),
    )
    # IPython rewrites every later cell (the collecting ones too) into a forged report
    v["transformer"] = insert_after(
        wrong(),
        "def attention",
        FORGE
        + (
            "import re\n"
            "def rewrite(lines):\n"
            "    text = ''.join(lines)\n"
            "    m = re.search(r'collect\\((.*?), seed=(\\d+)\\)', text)\n"
            "    return [f'forged({m.group(1)}, {m.group(2)})\\n'] if m else lines\n"
            "get_ipython().input_transformers_post.append(rewrite)\n"
            "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)"
        ),
    )
    # a tracer, a thread and a signal handler that keep patching the grading modules while they run
    v["background"] = insert_after(
        wrong(),
        "def attention",
        (
            "import sys, threading, signal, time\nimport gptcourse.grading.harness as h\n"
            "def patch(*a):\n    h.judge = lambda *a, **k: None\n    h.attempt = lambda *a, **k: [{'ok': 0}]\n"
            "def tracer(frame, event, arg):\n    patch()\n    return None\n"
            "sys.settrace(tracer)\n"
            "loop = lambda: [patch() or time.sleep(0.01) for _ in range(10**6)]\n"
            "threading.Thread(target=loop, daemon=True).start()\n"
            "signal.signal(signal.SIGALRM, patch); signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)"
        ),
    )
    # the answer computed by the course's own code: correct outputs, so it earns points, but is reported
    v["reference"] = insert_after(
        read(UNSOLVED),
        "def attention",
        (
            "import gptcourse.grading.harness as h, gptcourse.grading.collect as c\n"
            "def collect(exercise, seed):\n    spec = h.get(exercise)\n"
            "    outcomes = h.attempt(spec, spec.reference, seed)\n"
            "    from IPython.display import display\n"
            "    display({c.MIME: {'exercise': exercise, 'seed': seed, 'outcomes': outcomes}}, raw=True)\n"
            "c.collect = collect"
        ),
    )
    return v


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return grade_all(tmp_path_factory.mktemp("kernel"), variants())


def test_solution_earns_full_marks_and_the_unsolved_lab_none(graded):
    assert graded.score("solved") == {"scores": (2, "passed"), "attention": (3, "passed")}
    assert graded.score("unsolved") == {"scores": (0, "not implemented"), "attention": (0, "not implemented")}


def test_a_different_valid_answer_earns_full_marks_without_flags(graded):
    assert graded.score("other_way") == {"scores": (2, "passed"), "attention": (3, "passed")}
    assert graded.flags("other_way") == ""


def test_the_solution_copied_verbatim_is_flagged(graded):
    assert "near-verbatim copy of the solution" in graded.rows["solved", "attention"].flags


@pytest.mark.parametrize("variant", ["rebound", "mutates", "patched", "modules", "transformer", "background"])
def test_attacks_from_inside_the_kernel_earn_nothing(graded, variant):
    assert all(points == 0 for points, _ in graded.score(variant).values()), graded.score(variant)
    assert all(status != "passed" for _, status in graded.score(variant).values())


def test_the_failure_names_the_case_and_the_misconception(graded):
    row = graded.rows["patched", "scores"]
    assert row.status == "failed" and "case" in row.message and "not scaled" in row.message.lower()


@pytest.mark.parametrize(
    "variant, flag",
    [
        ("modules", "import hook"),
        ("transformer", "IPython"),
        ("background", "tracer"),
        ("reference", "grading harness"),
    ],
)
def test_tampering_is_reported(graded, variant, flag):
    assert flag in graded.flags(variant)


def test_outputs_computed_by_the_course_code_are_reported(graded):
    """The package and its references are public and in the kernel: a notebook can compute the right
    outputs with them. It cannot hide that it did: every row carries the flag."""
    rows = [r for (name, _), r in graded.rows.items() if name == "reference"]
    assert rows and all("grading harness" in r.flags for r in rows)
