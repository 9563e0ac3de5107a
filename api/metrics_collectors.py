"""Scrape-time collectors: figures other layers own, read when Prometheus asks.

`ServingCollector` reads the serving engine's snapshot (queue, batches, adapter cache counters); it
reports nothing until something started the engine (a scrape must not load a model).
`DatabaseCollector` runs two cheap statements (`lorasp_service.ops_figures`) on a pooled connection.
A failing database makes the scrape report `lorasp_metrics_database_up 0` rather than fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from api.deps import AppResources
from lorasp_service.ops_figures import job_counts_by_status, running_training_speeds

log = logging.getLogger(__name__)


class ServingCollector(Collector):
    def __init__(self, resources: AppResources) -> None:
        self.resources = resources

    def collect(self) -> Iterator[Metric]:
        engine = self.resources.started_serving
        if engine is None:
            return
        yield GaugeMetricFamily(
            "lorasp_serving_queue_depth", "Generation requests waiting for a batch", engine.pending_requests()
        )
        figures = engine.batching_figures()
        yield GaugeMetricFamily(
            "lorasp_serving_running_rows", "Rows decoding now, all base models", figures.running_rows
        )
        yield GaugeMetricFamily(
            "lorasp_serving_waiting_requests",
            "Generation requests waiting to join a batch",
            figures.waiting_requests,
        )
        yield GaugeMetricFamily(
            "lorasp_serving_kv_cache_bytes",
            "Bytes of the running batches' KV caches (continuous batching; 0 under static)",
            figures.kv_cache_bytes,
        )
        sizes = engine.batch_sizes
        yield CounterMetricFamily(
            "lorasp_serving_batches", "Decode batches run (continuous: groups admitted)", len(sizes)
        )
        yield CounterMetricFamily(
            "lorasp_serving_batch_rows", "Rows (requests) of the decode batches run (or admitted)", sum(sizes)
        )
        yield GaugeMetricFamily(
            "lorasp_serving_last_batch_rows", "Rows of the latest decode batch", sizes[-1] if sizes else 0
        )
        counters = engine.cache_counters()
        yield CounterMetricFamily(
            "lorasp_adapter_cache_hits", "Requests that found their adapter resident", counters.hits
        )
        yield CounterMetricFamily("lorasp_adapter_cache_loads", "Adapters loaded into a slot", counters.loads)
        yield CounterMetricFamily(
            "lorasp_adapter_cache_evictions", "Adapters evicted to make room", counters.evictions
        )
        yield GaugeMetricFamily(
            "lorasp_adapter_cache_resident", "Adapters resident now", engine.resident_adapter_count()
        )


class DatabaseCollector(Collector):
    def __init__(self, resources: AppResources) -> None:
        self.resources = resources

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("lorasp_jobs", "Fine-tuning jobs by status", labels=["status"])
        speed = GaugeMetricFamily(
            "lorasp_training_tokens_per_second",
            "Training throughput of each running job (its latest metrics event)",
            labels=["job", "base_model"],
        )
        try:
            with self.resources.read_connection() as connection:
                counts = job_counts_by_status(connection)
                speeds = running_training_speeds(connection)
        except SQLAlchemyError:
            log.exception("metrics: the database figures could not be read")
            yield GaugeMetricFamily("lorasp_metrics_database_up", "Database figures were read", 0)
            return
        for status, count in counts.items():
            jobs.add_metric([status], count)
        for figure in speeds:
            speed.add_metric([figure.job_id, figure.base_model], figure.tokens_per_second)
        yield GaugeMetricFamily("lorasp_metrics_database_up", "Database figures were read", 1)
        yield jobs
        yield speed
