"""The Fenwick tree against plain list sums."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from aicp.fenwick import Fenwick

OPS = st.lists(st.tuples(st.sampled_from(["append", "set", "save"]), st.integers(0, 10**6), st.integers(0, 5)), max_size=60)


@given(initial=st.lists(st.integers(0, 5), max_size=40), ops=OPS)
def test_prefix_and_find_match_a_list(initial: list[int], ops: list[tuple[str, int, int]]) -> None:
    tree, values = Fenwick(initial), list(initial)
    for op, where, value in ops:
        if op == "append" or not values:
            tree.append(value)
            values.append(value)
        elif op == "set":
            tree.set(where % len(values), value)
            values[where % len(values)] = value
        else:  # change two values the undoable way, check, undo
            saved: list[tuple[int, float]] = []
            changed = list(values)
            for i in (where % len(values), (where // 7) % len(values)):
                tree.set_saving(i, value, saved)
                changed[i] = value
            assert [tree.prefix(i) for i in range(len(changed) + 1)] == [0, *itertools.accumulate(changed)]
            tree.restore(saved)
        assert len(tree) == len(values) and [tree.value(i) for i in range(len(values))] == values
        sums = [0, *itertools.accumulate(values)]
        assert [tree.prefix(i) for i in range(len(values) + 1)] == sums and tree.total() == sums[-1]
        for x in range(sums[-1] + 1):
            # the smallest i whose running sum passes x; len(values) when none does
            want = next((i for i in range(len(values)) if sums[i + 1] > x), len(values))
            assert tree.find(x) == want, (values, x)
