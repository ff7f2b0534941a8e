"""The serving engine's counters and histograms, in Prometheus terms (`prometheus_client`, part of
the `serve` extra). Without that package the engine still runs and records nothing."""

from __future__ import annotations

import time
from typing import Any

# Seconds: a token on a busy 2-core box to a long prompt on a slow one.
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Nothing:
    """Stands in for a metric when prometheus_client is absent."""

    def labels(self, *args: Any, **kwargs: Any) -> _Nothing:
        return self

    def inc(self, *args: Any) -> None: ...

    def set(self, *args: Any) -> None: ...

    def observe(self, *args: Any) -> None: ...


class EngineMetrics:
    """One registry per engine (several engines in one process never collide)."""

    def __init__(self) -> None:
        try:
            import prometheus_client as p
        except ImportError:
            self.registry = None
            nothing = _Nothing()
            self.requests = self.prompt_tokens = self.tokens = nothing
            self.queue_depth = self.batch_rows = self.step_rows = nothing
            self.prefill_tokens = self.prefill_parts = nothing
            self.ttft = self.inter_token = nothing
            return
        self.registry = r = p.CollectorRegistry()
        self.requests = p.Counter(
            "ortgen_requests", "Requests by outcome", ["outcome"], registry=r
        )  # outcome: finished | cancelled | timeout | refused
        self.prompt_tokens = p.Counter("ortgen_prompt_tokens", "Prompt tokens", registry=r)
        self.tokens = p.Counter("ortgen_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = p.Gauge("ortgen_queue_depth", "Requests waiting for rows", registry=r)
        self.batch_rows = p.Gauge("ortgen_batch_rows", "Rows in the running batch", registry=r)
        self.prefill_tokens = p.Gauge(
            "ortgen_prefill_tokens", "Prompt tokens admitted, not yet cached", registry=r
        )
        self.prefill_parts = p.Counter(
            "ortgen_prefill_parts", "Prompt parts cached between decode steps", registry=r
        )
        self.step_rows = p.Histogram(
            "ortgen_step_batch_rows", "Rows per decode step", buckets=_ROW_BUCKETS, registry=r
        )
        self.ttft = p.Histogram(
            "ortgen_time_to_first_token_seconds",
            "Submission to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = p.Histogram(
            "ortgen_inter_token_latency_seconds",
            "Time between a request's consecutive tokens",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def ended(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def refused(self) -> None:
        self.ended("refused")

    def step(self, request: Any, tokens: int, now: float | None = None) -> None:
        """`request` got `tokens` new tokens (one per live row) at `now`."""
        now = time.monotonic() if now is None else now
        self.tokens.inc(tokens)
        if request.last_token is None:
            self.prompt_tokens.inc(len(request.prompt_ids) * len(request.sequences))
            self.ttft.observe(now - request.submitted)
        else:
            self.inter_token.observe(now - request.last_token)
        request.last_token = now

    def text(self) -> tuple[bytes, str]:
        """The Prometheus exposition: (body, content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
