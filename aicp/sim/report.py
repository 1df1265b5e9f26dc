"""Plain-text tables of aggregated results (no terminal library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(value: float | None, ci: float | None = None, digits: int = 2) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    if ci is not None:
        text += f" ±{ci:,.{digits}f}"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def compare_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per strategy: latency mean/p50/p99/p99.9 with 95% CI half-widths, throughput, failures, retries, lost."""
    headers = ["strategy", "mean ms", "p50 ms", "p99 ms", "p99.9 ms", "throughput/s", "failed", "retries", "lost", "reps"]
    rows = []
    for name, r in results.items():
        lat, ci = r["latency_ms"], r["latency_ms_ci95"]
        rows.append(
            [
                name,
                fmt(lat["mean"], ci["mean"]),
                fmt(lat["p50"], ci["p50"]),
                fmt(lat["p99"], ci["p99"]),
                fmt(lat["p999"], ci["p999"]),
                fmt(r["throughput_per_s"], r["throughput_per_s_ci95"], 1),
                fmt(r["failed"], r["failed_ci95"], 1),
                fmt(r["retries"], r["retries_ci95"], 1),
                str(r["lost"]),
                str(r["replications"]),
            ]
        )
    return table(headers, rows)


def json_results(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: run metadata plus ``results[STRATEGY]`` as aggregated."""
    return {
        k: payload[k]
        for k in ("scenario", "seed", "replications", "strategies", "run_dir", "wall_s", "error", "results")
        if k in payload
    }
