"""gptcourse.report: sentences computed from a run, and the mean ± std form of results over seeds."""

from __future__ import annotations

import math

import pytest

from gptcourse.report import difference, mean_std, say


def test_mean_std_lists_every_value_with_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == "2.000 ± 1.000 (n=3: 1.000, 2.000, 3.000)"
    assert mean_std([0.5, 0.25], digits=2) == "0.38 ± 0.18 (n=2: 0.50, 0.25)"


def test_mean_std_says_when_there_is_one_seed():
    assert mean_std([1.23456]) == "1.235 (one seed)"


def test_mean_std_rejects_no_values():
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_say_prints_outside_ipython(capsys):
    say("At the cpu size the model scores **1.5 nats**.")
    assert capsys.readouterr().out == "At the cpu size the model scores **1.5 nats**.\n"


def test_difference_is_the_gap_of_the_means_with_welchs_standard_error():
    d = difference([1.0, 2.0, 3.0], [4.0, 6.0])
    assert d.gap == pytest.approx(5.0 - 2.0)
    assert d.se == pytest.approx(math.sqrt(1.0 / 3 + 2.0 / 2))
    assert d.beyond_noise  # 3.0 > 2 * 1.155


def test_difference_inside_two_standard_errors_is_noise_whatever_the_sign():
    assert not difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]).beyond_noise
    assert difference([4.0, 4.1, 4.2], [1.0, 1.1, 1.2]).beyond_noise  # b below a counts too


def test_difference_needs_a_spread_on_each_side():
    with pytest.raises(ValueError, match="at least 2 values"):
        difference([1.0], [2.0, 3.0])
