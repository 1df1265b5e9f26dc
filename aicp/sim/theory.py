"""Closed forms the simulator is validated against."""

from __future__ import annotations


def mm1_sojourn(lam: float, mu: float) -> float:
    """Mean time in system of M/M/1: 1 / (mu - lambda)."""
    if lam >= mu:
        raise ValueError("unstable queue: lambda >= mu")
    return 1.0 / (mu - lam)


def erlang_c(c: int, lam: float, mu: float) -> float:
    """Probability that an arrival waits in M/M/c (Erlang C)."""
    a = lam / mu  # offered load in Erlangs
    rho = a / c
    if rho >= 1.0:
        raise ValueError("unstable queue: lambda >= c * mu")
    term = 1.0
    total = 1.0  # sum_{k=0}^{c-1} a^k / k!
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1.0 - rho)  # a^c / c! / (1 - rho)
    return last / (total + last)


def mmc_sojourn(c: int, lam: float, mu: float) -> float:
    """Mean time in system of M/M/c: C(c, a) / (c mu - lambda) + 1 / mu."""
    return erlang_c(c, lam, mu) / (c * mu - lam) + 1.0 / mu
