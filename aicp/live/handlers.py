"""Built-in task handlers for agents: ``echo``, ``text.classify`` and ``synthetic``.

A handler takes the task's decoded JSON payload and returns a JSON-encodable
result, either directly or as an awaitable. An exception becomes a signed
``Result(ok=False)`` carrying its text, so a failing handler never kills an agent.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Literal

Handler = Callable[[Any], Any]


async def invoke(handler: Handler, payload: Any, in_thread: bool = False) -> Any:
    """Run ``handler`` on ``payload``: awaited if async, in a worker thread if asked, else inline.

    Inline is the default for sync handlers because most are microseconds long and a
    thread hop would cost more than the work; pass ``in_thread=True`` for blocking ones.
    """
    if in_thread:
        result = await asyncio.to_thread(handler, payload)
    else:
        result = handler(payload)
    if inspect.isawaitable(result):
        result = await result
    return result


# ----------------------------------------------------------------------------- echo
def echo(payload: Any) -> Any:
    """Return the payload unchanged."""
    return payload


# ----------------------------------------------------------------------------- text.classify
#: Tiny embedded training set: sentiment of short product/service remarks.
_TRAINING: dict[str, tuple[str, ...]] = {
    "positive": (
        "I love this, it works perfectly",
        "great service and very fast delivery",
        "excellent quality, highly recommended",
        "this is amazing, thank you so much",
        "wonderful experience, the team was helpful and kind",
        "fantastic product, I am very happy with it",
        "really good value and easy to use",
        "best purchase I have made this year",
        "the support was brilliant and solved my problem",
        "awesome, everything arrived on time and works great",
        "nice design, pleasant to use every day",
        "superb performance, I am delighted",
    ),
    "negative": (
        "I hate this, it broke after one day",
        "terrible service and very slow delivery",
        "awful quality, do not buy",
        "this is useless and a waste of money",
        "horrible experience, the staff was rude",
        "the product is broken and support never answered",
        "really bad, I want a refund",
        "worst purchase ever, very disappointed",
        "it crashes all the time and loses my data",
        "poor design, annoying and hard to use",
        "the package arrived late and damaged",
        "disappointing performance, it keeps failing",
    ),
    "neutral": (
        "the package arrived on tuesday",
        "it is a blue box with two buttons",
        "I bought it last week from the store",
        "the manual has twenty pages",
        "it comes in three sizes",
        "the order number is on the receipt",
        "I used it for an hour today",
        "the device runs on two batteries",
        "shipping takes about five days",
        "the meeting is scheduled for monday",
        "it weighs about one kilogram",
        "the app is available for phones and tablets",
    ),
}

_TOKEN = re.compile(r"[a-z']+")
#: Function words carry no sentiment; left in, they tilt short texts toward the wordiest class.
_STOPWORDS = frozenset("a an the is it it's i i'm am are was were be been this that of on in at to for with and or my me we our you your so has have had do does did from".split())


def _tokens(text: str) -> list[str]:
    return [w for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS]


class NaiveBayesClassifier:
    """Multinomial naive Bayes with Laplace smoothing, trained at import on ``_TRAINING``."""

    def __init__(self, training: dict[str, tuple[str, ...]], alpha: float = 1.0) -> None:
        self.labels = sorted(training)
        self.alpha = alpha
        counts = {label: Counter(t for s in sentences for t in _tokens(s)) for label, sentences in training.items()}
        self.vocab = set().union(*counts.values())
        total_docs = sum(len(s) for s in training.values())
        self.log_prior = {label: math.log(len(training[label]) / total_docs) for label in self.labels}
        self.log_like: dict[str, dict[str, float]] = {}
        self.log_unknown: dict[str, float] = {}
        for label in self.labels:
            total = sum(counts[label].values()) + alpha * len(self.vocab)
            self.log_like[label] = {w: math.log((counts[label][w] + alpha) / total) for w in self.vocab}
            self.log_unknown[label] = math.log(alpha / total)

    def scores(self, text: str) -> dict[str, float]:
        """Posterior probability of each label."""
        words = [w for w in _tokens(text) if w in self.vocab]
        logp = {label: self.log_prior[label] + sum(self.log_like[label][w] for w in words) for label in self.labels}
        top = max(logp.values())
        exp = {label: math.exp(v - top) for label, v in logp.items()}
        z = sum(exp.values())
        return {label: v / z for label, v in exp.items()}

    def classify(self, text: str) -> dict[str, Any]:
        scores = self.scores(text)
        label = max(scores, key=lambda k: scores[k])
        return {"label": label, "scores": {k: round(v, 6) for k, v in scores.items()}, "model": "naive-bayes-sentiment-v1"}


_classifier = NaiveBayesClassifier(_TRAINING)


def text_classify(payload: Any) -> dict[str, Any]:
    """``{"text": "..."}`` (or the bare string, as an A2A text part arrives) -> ``{"label": ..., "scores": {...}, "model": ...}``."""
    if isinstance(payload, str):
        return _classifier.classify(payload)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise ValueError('text.classify expects {"text": "..."} or a string')
    return _classifier.classify(payload["text"])


# ----------------------------------------------------------------------------- synthetic
Distribution = Literal["constant", "exponential", "lognormal"]

#: How much earlier than its draw the synthetic handler asks its timer to wake it (ms). A sleep
#: of ``d`` lasts ``d`` rounded to the event loop's timer (uvloop: whole ms; the mean rounding
#: error is about 0 for spread draws) plus a wake-up of about 0.25-0.45 ms on this machine, flat
#: in the draw (docs/SIMULATOR.md): without a lead a 2.5 ms mean became about 2.9 ms. A
#: constant, not a running estimate of the overshoot: the sleep then stays a pure function of
#: the draw, so the simulator and the calibration reproduce it exactly from the seeded draws
#: (:func:`timer_sleep_s`, ``Calibration.lead_ms``); what the wake-up still differs from the
#: lead is measured in ``wake_ms`` and charged by the model.
SLEEP_LEAD_MS = 0.3


def timer_sleep_s(draw_s: float, lead_s: float = SLEEP_LEAD_MS / 1000.0) -> float:
    """What the synthetic handler passes to ``asyncio.sleep`` for a draw (s): ``draw - lead``, never negative
    (0: the handler yields to the loop once). The simulator's stack model rounds this to the timer, not the draw."""
    return max(0.0, draw_s - lead_s)



class Synthetic:
    """A handler whose service time and failures follow a distribution, for benchmarks.

    ``mean_ms`` is the mean service time; lognormal uses ``sigma`` for its shape and is
    scaled so its mean is ``mean_ms``. It sleeps with ``asyncio.sleep``, so many tasks
    overlap on one agent up to its concurrency; with no service time it returns its
    result directly, not as an awaitable. The sleep asks for the draw less ``lead_ms``
    (:data:`SLEEP_LEAD_MS`, :func:`timer_sleep_s`) so that, timer rounding and wake-up
    included, the handler lasts its draw on average; the handler time the agent signs
    is still the time it really took.
    """

    def __init__(
        self,
        distribution: Distribution = "constant",
        mean_ms: float = 0.0,
        fail_prob: float = 0.0,
        sigma: float = 0.5,
        seed: int | None = None,
        lead_ms: float = SLEEP_LEAD_MS,
    ) -> None:
        if distribution not in ("constant", "exponential", "lognormal"):
            raise ValueError(f"unknown distribution {distribution!r}")
        if mean_ms < 0 or not 0.0 <= fail_prob <= 1.0:
            raise ValueError("mean_ms must be >= 0 and fail_prob in [0, 1]")
        if lead_ms < 0:
            raise ValueError("lead_ms must be >= 0")
        self.lead_s = lead_ms / 1000.0
        self.distribution = distribution
        self.mean_ms = mean_ms
        self.fail_prob = fail_prob
        self.sigma = sigma
        self.rng = random.Random(seed)

    def service_time_s(self) -> float:
        mean = self.mean_ms / 1000.0
        if mean <= 0.0:
            return 0.0
        if self.distribution == "constant":
            return mean
        if self.distribution == "exponential":
            return self.rng.expovariate(1.0 / mean)
        mu = math.log(mean) - self.sigma**2 / 2.0
        return self.rng.lognormvariate(mu, self.sigma)

    def __call__(self, payload: Any) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        """The result at once for a zero service time (an agent then answers without a task switch), else an awaitable."""
        if self.mean_ms <= 0.0 and self.fail_prob <= 0.0:
            return {"service_ms": 0.0, "echo": payload}  # what the general path gives then, with no draw and no rounding
        delay = self.service_time_s()
        if delay > 0.0:
            return self._after(delay, payload)
        return self._outcome(delay, payload)

    async def _after(self, delay: float, payload: Any) -> dict[str, Any]:
        await asyncio.sleep(timer_sleep_s(delay, self.lead_s))
        return self._outcome(delay, payload)

    def _outcome(self, delay: float, payload: Any) -> dict[str, Any]:
        if self.fail_prob > 0.0 and self.rng.random() < self.fail_prob:
            raise RuntimeError("synthetic failure")
        return {"service_ms": round(delay * 1000.0, 3), "echo": payload}


def parse_service_time(spec: str) -> tuple[Distribution, float]:
    """``"5"``, ``"constant:5"``, ``"exponential:5"``, ``"lognormal:5"`` -> (distribution, mean ms)."""
    name, _, value = spec.partition(":")
    if not value:
        name, value = "constant", name
    if name not in ("constant", "exponential", "lognormal"):
        raise ValueError(f"unknown distribution {name!r}; use constant, exponential or lognormal")
    return name, float(value)  # type: ignore[return-value]


def builtin(name: str, service_time: str = "0", fail_prob: float = 0.0, seed: int | None = None) -> Handler:
    """A built-in handler by name."""
    if name == "echo":
        return echo
    if name == "text.classify":
        return text_classify
    if name == "synthetic":
        dist, mean = parse_service_time(service_time)
        return Synthetic(dist, mean, fail_prob, seed=seed)
    raise ValueError(f"unknown built-in handler {name!r}; known: {', '.join(BUILTINS)}")


BUILTINS: tuple[str, ...] = ("echo", "text.classify", "synthetic")

__all__ = [
    "BUILTINS",
    "SLEEP_LEAD_MS",
    "Handler",
    "NaiveBayesClassifier",
    "Synthetic",
    "builtin",
    "echo",
    "invoke",
    "parse_service_time",
    "text_classify",
    "timer_sleep_s",
]
