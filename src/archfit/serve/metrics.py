"""Prometheus metrics at /metrics: requests and their latency per model and bucket, queue depth,
batch fill and padding waste. Each server has its own registry (tests start several in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .servable import BatchStats

_LATENCY = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("archfit_requests", "Infer requests answered, by HTTP status",
                                ["model", "bucket", "code"], registry=r)
        self.latency = Histogram("archfit_request_seconds", "Infer request latency: arrival to answer",
                                 ["model", "bucket"], buckets=_LATENCY, registry=r)
        self.queue = Gauge("archfit_queue_rows", "Rows queued for the model's next batches", ["model"], registry=r)
        self.batch_seconds = Histogram("archfit_batch_seconds", "Engine time per batch", ["model", "bucket"],
                                       buckets=_LATENCY, registry=r)
        self.fill = Histogram("archfit_batch_fill_ratio", "Rows filled of the batch capacity per engine call group",
                              ["model", "bucket"], buckets=(.125, .25, .375, .5, .625, .75, .875, 1), registry=r)
        self.positions = Counter("archfit_positions", "Positions computed, by whether they held real data or padding",
                                 ["model", "bucket", "kind"], registry=r)

        self.generated = Counter("archfit_generated_tokens", "Tokens generated (generation files)", ["model"],
                                 registry=r)
        self.first_token = Histogram("archfit_time_to_first_token_seconds", "Generation: request to its first token",
                                     ["model"], buckets=_LATENCY, registry=r)

    def generation(self, model: str, tokens: int, first: float | None) -> None:
        self.generated.labels(model).inc(tokens)
        if first is not None:
            self.first_token.labels(model).observe(first)

    def batch(self, model: str, stats: BatchStats, seconds: float) -> None:
        self.batch_seconds.labels(model, stats.bucket).observe(seconds)
        self.fill.labels(model, stats.bucket).observe(min(1.0, stats.rows / max(1, stats.capacity)))
        self.positions.labels(model, stats.bucket, "real").inc(stats.real)
        self.positions.labels(model, stats.bucket, "padding").inc(max(0, stats.computed - stats.real))

    def answered(self, model: str, bucket: str, code: int, seconds: float | None) -> None:
        self.requests.labels(model, bucket, str(code)).inc()
        if seconds is not None:
            self.latency.labels(model, bucket).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
