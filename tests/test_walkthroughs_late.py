"""Walkthroughs 05-09 run and draw (the other half of test_walkthroughs.py, in a file of their own
so that the two halves run on two pytest-xdist workers at once)."""

import os

import pytest

from test_walkthroughs import WALKTHROUGHS, check_walkthrough

LATE = [p for p in WALKTHROUGHS if os.path.basename(p)[:2] >= "05"]


def test_the_halves_cover_every_walkthrough():
    from test_walkthroughs import EARLY

    assert sorted(EARLY + LATE) == WALKTHROUGHS and not set(EARLY) & set(LATE) and len(LATE) >= 5


@pytest.mark.parametrize("path", LATE, ids=os.path.basename)
def test_walkthrough_runs_and_draws(path, tmp_path):
    check_walkthrough(path, tmp_path)
