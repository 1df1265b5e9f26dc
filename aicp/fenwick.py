"""Prefix sums over a growing array (a Fenwick tree, or binary indexed tree).

The registry uses one with 0/1 values to find the k-th active agent of a
capability, and ``trust_weighted`` uses one with float weights to draw an agent
with probability proportional to its weight. Both need the same three things:
change one value, sum a prefix, and find where a running sum crosses ``x``.

Costs, for n values: ``append``, ``set``, ``prefix`` and ``find`` are O(log n)
(``append`` is O(1) amortized); ``rebuild`` is O(n). Float sums drift by a few
ulps per update; owners that store floats call ``rebuild`` now and then, which
recomputes every node from the exact leaf values.
"""

from __future__ import annotations

from collections.abc import Iterable


class Fenwick:
    """Values ``v[0..n)`` with O(log n) point updates, prefix sums and prefix search."""

    __slots__ = ("_tree", "_values")

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._tree: list[float] = [0]
        self._values: list[float] = []
        self.rebuild(values)

    def __len__(self) -> int:
        return len(self._values)

    def value(self, i: int) -> float:
        """``v[i]``, O(1)."""
        return self._values[i]

    def rebuild(self, values: Iterable[float]) -> None:
        """Replace every value, O(n)."""
        vals = list(values)
        tree: list[float] = [0, *vals]  # 1-based: tree[i] holds v[i - lowbit(i) .. i - 1]
        n = len(vals)
        for i in range(1, n + 1):
            j = i + (i & -i)
            if j <= n:
                tree[j] += tree[i]
        self._tree, self._values = tree, vals

    def append(self, value: float) -> None:
        """Add ``v[n] = value``, O(log n) worst case, O(1) amortized."""
        tree = self._tree
        self._values.append(value)
        i = len(tree)
        node = value
        low = i & -i
        step = 1
        while step < low:  # the node covers its children i-1, i-2, i-4, ...
            node += tree[i - step]
            step <<= 1
        tree.append(node)

    def set(self, i: int, value: float) -> None:
        """``v[i] = value``, O(log n)."""
        delta = value - self._values[i]
        if not delta:
            return
        self._values[i] = value
        tree = self._tree
        n = len(tree)
        i += 1
        while i < n:
            tree[i] += delta
            i += i & -i

    def set_saving(self, i: int, value: float, saved: list[tuple[int, float]]) -> None:
        """Like ``set``, appending every overwritten node to ``saved`` so ``restore`` can undo it exactly."""
        delta = value - self._values[i]
        saved.append((-1 - i, self._values[i]))
        self._values[i] = value
        tree = self._tree
        n = len(tree)
        i += 1
        while i < n:
            saved.append((i, tree[i]))
            tree[i] += delta
            i += i & -i

    def restore(self, saved: list[tuple[int, float]]) -> None:
        """Undo ``set_saving`` calls bit for bit (no float drift)."""
        tree, values = self._tree, self._values
        for node, old in reversed(saved):
            if node < 0:
                values[-1 - node] = old
            else:
                tree[node] = old

    def prefix(self, i: int) -> float:
        """``v[0] + ... + v[i-1]``, O(log n)."""
        tree = self._tree
        total: float = 0
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total

    def total(self) -> float:
        """The sum of all values, O(log n)."""
        return self.prefix(len(self._values))

    def find(self, x: float) -> int:
        """The smallest ``i`` with ``prefix(i + 1) > x``, O(log n); ``len(self)`` when there is none.

        With 0/1 values this is the index of the element of rank ``x``; with
        non-negative weights, the element whose share of the running sum holds ``x``
        (zero-weight elements are never returned)."""
        tree = self._tree
        n = len(tree) - 1
        pos = 0
        step = 1 << (n.bit_length() - 1) if n else 0
        while step:
            nxt = pos + step
            if nxt <= n and tree[nxt] <= x:
                pos = nxt
                x -= tree[nxt]
            step >>= 1
        return pos
