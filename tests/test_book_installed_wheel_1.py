"""The chapters as Colab meets them, first half: the package installed from its wheel, each notebook alone in
an empty folder (what is checked, and why the chapters are split over two files: ``installed_wheel.py``)."""

from __future__ import annotations

import pytest

from installed_wheel import (CHAPTERS, HALVES, check_chapter_runs_alone, check_wheel_ships_the_committed_results,
                             install_wheel, split_in_halves)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_wheel(tmp_path_factory)


def test_wheel_ships_the_committed_results(installed):
    check_wheel_ships_the_committed_results(installed)


def test_the_two_halves_hold_every_chapter_once():
    assert sorted(HALVES[0] + HALVES[1]) == CHAPTERS and not set(HALVES[0]) & set(HALVES[1])
    assert split_in_halves({"a": 5.0, "b": 3.0, "c": 2.0, "d": 1.0}) == (["a", "d"], ["b", "c"])


@pytest.mark.parametrize("chapter", HALVES[0])
def test_chapter_runs_alone_from_the_installed_wheel(chapter, installed, tmp_path):
    check_chapter_runs_alone(chapter, installed, tmp_path)
