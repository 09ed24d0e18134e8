"""The chapters as Colab meets them, second half: the package installed from its wheel, each notebook alone in
an empty folder (what is checked, and why the chapters are split over two files: ``installed_wheel.py``)."""

from __future__ import annotations

import pytest

from installed_wheel import HALVES, check_chapter_runs_alone, install_wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_wheel(tmp_path_factory)


@pytest.mark.parametrize("chapter", HALVES[1])
def test_chapter_runs_alone_from_the_installed_wheel(chapter, installed, tmp_path):
    check_chapter_runs_alone(chapter, installed, tmp_path)
