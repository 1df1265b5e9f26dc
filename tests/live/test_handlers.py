"""The built-in handlers agents serve: echo, text.classify and synthetic (no sockets needed)."""

from __future__ import annotations

import asyncio
import statistics
import threading
from typing import Any

import pytest
from live_helpers import agent, run, serving, wait_until

from aicp import errors
from aicp.live import handlers
from aicp.live.controller import AICPController
from aicp.live.handlers import Synthetic, builtin, echo, invoke, parse_service_time, text_classify


def test_echo_returns_its_payload() -> None:
    assert echo({"a": [1, 2]}) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love it, the quality is excellent", "positive"),
        ("terrible, it broke after a day and support was rude", "negative"),
        ("the box arrived on monday", "neutral"),
        ("awesome team, very helpful", "positive"),
        ("a waste of money, I want a refund", "negative"),
    ],
)
def test_text_classify_labels_unseen_sentences(text: str, label: str) -> None:
    out = text_classify({"text": text})
    assert out["label"] == label
    assert abs(sum(out["scores"].values()) - 1.0) < 1e-5
    assert out["scores"][label] == max(out["scores"].values())


def test_text_classify_refuses_a_payload_without_text() -> None:
    with pytest.raises(ValueError, match="text"):
        text_classify({"txt": "x"})
    with pytest.raises(ValueError, match="text"):
        text_classify(["great"])


def test_text_classify_takes_a_bare_string_as_an_a2a_text_part_arrives() -> None:
    assert text_classify("excellent quality, highly recommended") == text_classify({"text": "excellent quality, highly recommended"})


@pytest.mark.parametrize("dist", ["constant", "exponential", "lognormal"])
def test_synthetic_service_time_has_the_requested_mean(dist: str) -> None:
    h = Synthetic(dist, mean_ms=10.0, seed=1)  # type: ignore[arg-type]
    samples = [h.service_time_s() for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(0.010, rel=0.05)
    if dist == "constant":
        assert min(samples) == max(samples) == 0.010


@pytest.mark.parametrize("lead_ms", [handlers.SLEEP_LEAD_MS, 0.0])
def test_synthetic_asks_its_timer_for_the_draw_less_its_lead_never_below_zero(monkeypatch: pytest.MonkeyPatch, lead_ms: float) -> None:
    # the schedule, not its timing: what the handler passes to asyncio.sleep for each of its seeded draws
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float) -> None:
        asked.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(handlers.asyncio, "sleep", record)
    h, twin = Synthetic("exponential", 2.5, seed=4, lead_ms=lead_ms), Synthetic("exponential", 2.5, seed=4)
    draws = [twin.service_time_s() for _ in range(300)]

    async def main() -> list[Any]:
        return [await invoke(h, "x") for _ in draws]

    results = asyncio.run(main())
    assert asked == [max(0.0, d - lead_ms / 1000.0) for d in draws]
    assert [r["service_ms"] for r in results] == [round(d * 1000.0, 3) for d in draws]  # the payload still names the draw
    if lead_ms > 0.0:
        assert handlers.SLEEP_LEAD_MS == lead_ms and 0.0 < handlers.SLEEP_LEAD_MS < 1.0
        assert 0 < asked.count(0.0) < len(draws) // 4  # a draw under the lead yields once
    with pytest.raises(ValueError):
        Synthetic("constant", 1.0, lead_ms=-0.1)


def test_synthetic_failure_probability_and_zero_default() -> None:
    async def main() -> tuple[int, int]:
        h = Synthetic(fail_prob=0.3, seed=2)
        failures = 0
        for _ in range(2000):
            try:
                await invoke(h, "x")
            except RuntimeError:
                failures += 1
        ok = await invoke(Synthetic(seed=3), "y")
        assert ok == {"service_ms": 0.0, "echo": "y"}
        return failures, 2000

    failures, n = asyncio.run(main())
    assert 0.25 < failures / n < 0.35


def test_parse_service_time_and_builtin_lookup() -> None:
    assert parse_service_time("5") == ("constant", 5.0)
    assert parse_service_time("lognormal:2.5") == ("lognormal", 2.5)
    with pytest.raises(ValueError):
        parse_service_time("gamma:3")
    assert builtin("echo") is echo
    with pytest.raises(ValueError):
        builtin("nope")


def test_invoke_runs_sync_inline_async_awaited_and_blocking_in_a_thread() -> None:
    main_thread = threading.get_ident()

    async def async_handler(p: int) -> int:
        await asyncio.sleep(0)
        return p + 1

    async def main() -> None:
        assert await invoke(lambda p: (p, threading.get_ident()), 1) == (1, main_thread)
        assert await invoke(async_handler, 1) == 2
        _, tid = await invoke(lambda p: (p, threading.get_ident()), 1, in_thread=True)
        assert tid != main_thread

    asyncio.run(main())


def test_an_agent_runs_at_most_its_concurrency_sync_and_async_handlers_alike() -> None:
    """Sync handlers run inline in the agent (no task per task); async ones in tasks; one slot count for both."""

    async def main() -> None:
        gate = asyncio.Event()
        running = peak = 0

        async def slow(p: Any) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await gate.wait()
            running -= 1
            return p

        def fast(p: Any) -> Any:
            if p == "boom":
                raise ValueError("boom")
            return [p, running]

        async with serving() as server, agent(server.url, "a", {"slow": slow, "fast": fast}, concurrency=2) as client, AICPController(server.url, "c") as ctl:
            slows = [asyncio.ensure_future(ctl.submit("slow", i, timeout=10)) for i in range(4)]
            await wait_until(lambda: running == 2, what="two slow tasks running")
            assert client.running == 2
            fasts = [asyncio.ensure_future(ctl.submit("fast", i, timeout=10)) for i in range(3)]
            await asyncio.sleep(0.1)
            assert not any(f.done() for f in fasts) and peak == 2  # no free slot: they wait, even though they are sync
            gate.set()
            assert await asyncio.gather(*slows) == [0, 1, 2, 3]
            assert [r[0] for r in await asyncio.gather(*fasts)] == [0, 1, 2]
            with pytest.raises(errors.TaskError) as exc:
                await ctl.submit("fast", "boom", timeout=10)
            assert exc.value.code == errors.AGENT_FAILED and "ValueError: boom" in exc.value.message
            assert peak == 2 and client.running == 0 and client.completed == 8

    run(main())
