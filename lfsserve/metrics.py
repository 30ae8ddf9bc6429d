"""Prometheus metrics: what the server is doing, served at /metrics in the text exposition format.

Every request is counted once it is answered (by route kind, method and status, with the bytes
received and sent) from the access-log hook, so front ends need do nothing for that. Front ends
report what only they know through small hooks on the `Metrics` object of their app
(`metrics_of(request.app)`):

    with metrics.upload("lfs"):      # an upload body being received (in-flight gauge)
        ...
    with metrics.push() as push:     # an hg push being applied (count + duration by result)
        ...
        push.result = "refused"      # default "accepted"; an exception makes it "error"

The blob store's object count and size come from a scan (`set_store_scanner`, e.g.
`scan_blob_store`) that /metrics reruns when its last result is older than `store_scan_interval`
seconds: a scrape never walks the store more than once per interval. Counters a front end keeps
itself (a dict of totals) are exported with `add_counters`.
Each app has its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .aio import run_blocking

__all__ = [
    "METRICS",
    "Metrics",
    "PushObservation",
    "StoreStats",
    "metrics_handler",
    "metrics_of",
    "scan_blob_store",
]

# Durations from a health probe to a multi-gigabyte upload.
_SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 120, 600, float("inf"))


@dataclass
class PushObservation:
    result: str = "accepted"


@dataclass(frozen=True)
class StoreStats:
    objects: int
    bytes: int


class _StoreCollector:
    """Exposes the last store scan; the scan itself runs in Metrics.refresh_store_stats."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self):
        stats = self._metrics.store_stats
        if stats is None:
            return
        objects = GaugeMetricFamily("lfsserve_lfs_objects", "LFS objects in the blob store")
        objects.add_metric([], stats.objects)
        size = GaugeMetricFamily("lfsserve_lfs_stored_bytes", "Total size of the LFS objects in the blob store")
        size.add_metric([], stats.bytes)
        yield objects
        yield size


class _CountersCollector:
    """Totals a front end keeps in a dict, as `<prefix>_<key>_total` counters."""

    def __init__(self, prefix: str, source: Callable[[], Mapping[str, int]], what: str):
        self._prefix, self._source, self._what = prefix, source, what

    def collect(self):
        for key, value in self._source().items():
            family = CounterMetricFamily(f"{self._prefix}_{key}", f"{self._what}: {key.replace('_', ' ')}")
            family.add_metric([], value)
            yield family


async def scan_blob_store(store) -> StoreStats:
    """Count a lfsserve.blobstore.BlobStore's objects and bytes (walks the whole store)."""
    objects = size = 0
    async for _, n, _ in store.list():
        objects += 1
        size += n
    return StoreStats(objects, size)


class Metrics:
    def __init__(self, store_scan_interval: float = 60.0):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lfsserve_http_requests", "HTTP requests answered, by route kind, method and status",
                                ["kind", "method", "status"], registry=r)
        self.request_seconds = Histogram("lfsserve_http_request_duration_seconds",
                                         "Time from request to the end of the response, by route kind",
                                         ["kind"], buckets=_SECONDS_BUCKETS, registry=r)
        self.bytes_in = Counter("lfsserve_http_received_bytes", "Request body bytes received, by route kind",
                                ["kind"], registry=r)
        self.bytes_out = Counter("lfsserve_http_sent_bytes", "Response body bytes sent, by route kind",
                                 ["kind"], registry=r)
        self.in_flight = Gauge("lfsserve_http_requests_in_flight", "Requests being handled", registry=r)
        self.uploads_in_flight = Gauge("lfsserve_uploads_in_flight",
                                       "Upload bodies being received (lfs: object PUT, hg: push)",
                                       ["protocol"], registry=r)
        self.pushes = Counter("lfsserve_hg_pushes",
                              "hg pushes, by result (accepted; refused: nothing changed; error: server failure)",
                              ["result"], registry=r)
        self.push_seconds = Histogram("lfsserve_hg_push_duration_seconds", "Time to receive and apply an hg push",
                                      buckets=_SECONDS_BUCKETS, registry=r)
        self.rejected = Counter("lfsserve_limit_rejections", "Requests refused by a limit (concurrency, timeout, idle)",
                                ["limit"], registry=r)
        for protocol in ("lfs", "hg"):
            self.uploads_in_flight.labels(protocol)
        for result in ("accepted", "refused", "error"):
            self.pushes.labels(result)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}
        self.store_stats: StoreStats | None = None
        self.store_scan_interval = store_scan_interval
        self._scanner: Callable[[], Awaitable[StoreStats]] | None = None
        self._scanned_at = 0.0
        self._scan_lock = asyncio.Lock()
        r.register(_StoreCollector(self))

    # -- hooks for the front ends ---------------------------------------------------------------
    def observe_request(self, kind: str, method: str, status: int, bytes_in: int, bytes_out: int,
                        seconds: float) -> None:
        # The labelled children, looked up once per (kind, method, status): labels() builds a
        # tuple and takes a lock on every call, and this runs for every request.
        key = (kind, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(kind, method, str(status)), self.request_seconds.labels(kind),
                        self.bytes_in.labels(kind), self.bytes_out.labels(kind))
            if len(self._request_children) < 1024:  # methods are client-chosen: stay bounded
                self._request_children[key] = children
        requests, request_seconds, counted_in, counted_out = children
        requests.inc()
        request_seconds.observe(seconds)
        if bytes_in:
            counted_in.inc(bytes_in)
        if bytes_out:
            counted_out.inc(bytes_out)

    @contextmanager
    def upload(self, protocol: str) -> Iterator[None]:
        gauge = self.uploads_in_flight.labels(protocol)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    @contextmanager
    def push(self) -> Iterator[PushObservation]:
        obs = PushObservation()
        start = time.monotonic()
        try:
            yield obs
        except BaseException:
            obs.result = "error"
            raise
        finally:
            self.pushes.labels(obs.result).inc()
            self.push_seconds.observe(time.monotonic() - start)

    # -- blob store statistics ------------------------------------------------------------------
    def set_store_scanner(self, scan: Callable[[], Awaitable[StoreStats]]) -> None:
        """`scan()` walks the store (keeping the loop free, as BlobStore.list does)."""
        self._scanner = scan

    def add_counters(self, prefix: str, source: Callable[[], Mapping[str, int]], what: str) -> None:
        self.registry.register(_CountersCollector(prefix, source, what))

    async def refresh_store_stats(self) -> None:
        if self._scanner is None:
            return
        async with self._scan_lock:  # concurrent scrapes share one scan
            if self.store_stats is not None and time.monotonic() - self._scanned_at < self.store_scan_interval:
                return
            self.store_stats = await self._scanner()
            self._scanned_at = time.monotonic()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("lfsserve_metrics", Metrics)


def metrics_of(app: web.Application) -> Metrics:
    return app[METRICS]


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    await metrics.refresh_store_stats()
    body = await run_blocking(metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
