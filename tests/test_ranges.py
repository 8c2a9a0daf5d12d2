"""RangeSet (remote/fetchstate.py): the byte ranges a fetch requested, received and released.

Readers are only served what ``released`` covers, so a wrong merge or an off-by-one here would
serve bytes that never arrived. Each operation is checked against a plain set of offsets.
"""

from __future__ import annotations

import random

import pytest

from cachefs.remote.fetchstate import RangeSet


def test_adding_merges_overlapping_and_touching_ranges_only() -> None:
    r = RangeSet()
    r.add(10, 20)
    r.add(30, 40)
    assert (r.starts, r.ends) == ([10, 30], [20, 40])
    r.add(20, 25)  # touches the first: one range
    assert (r.starts, r.ends) == ([10, 30], [25, 40])
    r.add(26, 29)  # a gap of one byte on each side stays a gap
    assert (r.starts, r.ends) == ([10, 26, 30], [25, 29, 40])
    r.add(0, 100)  # swallows all of them
    assert (r.starts, r.ends) == ([0], [100])
    r.add(50, 50)  # empty: nothing
    r.add(60, 55)
    assert (r.starts, r.ends) == ([0], [100])
    assert r.total() == 100


def test_covers_end_of_and_next_gap_at_the_edges() -> None:
    r = RangeSet()
    assert not r.covers(0, 1) and r.covers(5, 5)  # an empty range is always covered
    assert r.next_gap(0, 100) == (0, 100)
    r.add(10, 20)
    assert r.covers(10, 20) and r.covers(19, 20)
    assert not r.covers(9, 11) and not r.covers(10, 21) and not r.covers(20, 21)
    assert r.end_of(10) == 20 and r.end_of(19) == 20
    assert r.end_of(20) == 20 and r.end_of(5) == 5  # outside: the position itself
    assert r.next_gap(0, 100) == (0, 10)
    assert r.next_gap(10, 100) == (20, 100)  # from inside a range: after it
    assert r.next_gap(10, 20) is None  # nothing uncovered below the limit
    assert r.next_gap(15, 18) is None
    r.add(30, 40)
    assert r.next_gap(12, 100) == (20, 30)
    assert r.next_gap(12, 25) == (20, 25)  # cut at the limit


@pytest.mark.parametrize("seed", range(20))
def test_random_ranges_agree_with_a_set_of_offsets(seed: int) -> None:
    rng = random.Random(seed)
    size = 200
    r = RangeSet()
    model: set[int] = set()
    for _ in range(40):
        start = rng.randrange(size)
        end = start + rng.randrange(-3, 30)
        r.add(start, end)
        model |= set(range(start, end))
        # disjoint, sorted, never touching (touching ranges are merged)
        assert all(s < e for s, e in zip(r.starts, r.ends, strict=True))
        assert all(e < s for e, s in zip(r.ends, r.starts[1:], strict=False))
        assert r.total() == len(model)
        for _ in range(20):
            a = rng.randrange(size + 10)
            b = a + rng.randrange(0, 40)
            assert r.covers(a, b) == set(range(a, b)).issubset(model), (a, b)
            end_of = a
            while end_of in model:
                end_of += 1
            assert r.end_of(a) == end_of
            gap = r.next_gap(a, b)
            missing = [i for i in range(end_of, b) if i not in model]
            if not missing:
                assert gap is None
            else:
                first = missing[0]
                last = first
                while last < b and last not in model:
                    last += 1
                assert gap == (first, last), (a, b)
