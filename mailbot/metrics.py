"""Metrics for ``GET /metrics`` (Prometheus text format), of two kinds.

What the database holds (requests, stored mail and outgoing mail by status, the
outbox's depth and the age of its oldest mail, dead letters) is read at each
scrape (``storage.gauges``): every process and instance on one database sees
the same rows, so any of them reports the whole truth, whichever acted on the
mail (``serve``, ``mailbot process`` from an MTA's pipe, another instance).
Aggregate these across instances with ``max``, never ``sum``.

What happens in a process (SMTP replies, the latency from arrival to decision,
mails sent or retried, wrong tokens, throttled clients, duplicates) is counted
by prometheus_client instruments in a registry of this module's own (never the
library's global one), created by ``enable()``. Until then each call below is
one test of a global: ``mailbot process`` and the other one-shot commands,
which nobody scrapes, never import prometheus_client (about 0.1 s of CPU).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from mailbot.clock import Clock
from mailbot.domain import InboundStatus, OutboxStatus, RequestStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds from arrival to decision: well under a second when all is well; minutes
to hours for mail stored during an outage and acted on once it is over."""


class _Instruments:
    """This process's counters, in their own registry."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.smtp_replies = Counter(
            "mailbot_smtp_replies",
            "SMTP replies the listener sent, by code (451 and 4xx: a client will retry).",
            ["code"],
            registry=registry,
        )
        self.by_code: dict[str, Counter] = {}
        self.handled = Counter(
            "mailbot_inbound_handled",
            "Stored messages this process acted on, by outcome (processed, ignored, failed).",
            ["outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "mailbot_inbound_duplicates",
            "Messages received again (same content and Message-ID), stored once and not acted on.",
            registry=registry,
        )
        self.latency = Histogram(
            "mailbot_processing_latency_seconds",
            "Time from a message's arrival (stored) to its decision (acted on).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.outgoing = Counter(
            "mailbot_outgoing_mails",
            "Attempts at sending outbox mail, by event and result "
            "(sent; retry: deferred, tried again later; dead: given up).",
            ["event", "result"],
            registry=registry,
        )
        self.bad_tokens = Counter(
            "mailbot_bad_tokens",
            "Unknown or wrong tokens received, by channel (email, web).",
            ["channel"],
            registry=registry,
        )
        self.throttled = Counter(
            "mailbot_throttled",
            "Attempts refused by a rate limit, by limit (answers, resends, bad-tokens, guesses).",
            ["limit"],
            registry=registry,
        )


_live: _Instruments | None = None
_lock = threading.Lock()


def enable() -> CollectorRegistry:
    """Start counting in this process (``serve`` and the web app call it); returns
    the registry. Calling it again changes nothing."""
    global _live
    with _lock:
        if _live is None:
            _live = _Instruments()
        return _live.registry


# -- what the service and the adapters call where things happen -----------------


def smtp_reply(reply: str) -> None:
    """One SMTP reply line; a multi-line reply counts once, at its last line.
    A few per message: each code's counter is looked up once, then kept."""
    if _live is not None and reply[3:4] != "-":
        code = reply[:3]
        counter = _live.by_code.get(code)
        if counter is None:
            counter = _live.by_code.setdefault(code, _live.smtp_replies.labels(code))
        counter.inc()


def inbound_handled(outcome: str, waited: timedelta | None) -> None:
    """A stored message acted on; ``waited``: from its arrival to the decision."""
    if _live is not None:
        _live.handled.labels(outcome).inc()
        if waited is not None:
            _live.latency.observe(max(waited.total_seconds(), 0.0))


def inbound_duplicates(count: int) -> None:
    if _live is not None and count:
        _live.duplicates.inc(count)


def outgoing(event: str, result: str) -> None:
    """One attempt at sending a mail of ``event``: sent, retry or dead."""
    if _live is not None:
        _live.outgoing.labels(event, result).inc()


def bad_token(channel: str) -> None:
    if _live is not None:
        _live.bad_tokens.labels(channel).inc()


def throttled(limit: str) -> None:
    if _live is not None:
        _live.throttled.labels(limit).inc()


# -- the scrape -------------------------------------------------------------------


class _DatabaseCollector:
    """The database's gauges, read when collected (a prometheus_client collector)."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from mailbot.storage import gauges

        up = GaugeMetricFamily(
            "mailbot_database_up", "1 if this scrape could read the database, 0 if not."
        )
        try:
            found = gauges.read(self.engine)
        except Exception as exc:  # the scrape still answers, and says so
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        waiting = sum(found.outbox.get(status, 0) for status in gauges.WAITING)
        age = 0.0
        if found.oldest_waiting is not None:
            age = max((self.clock.now() - found.oldest_waiting).total_seconds(), 0.0)
        return [
            up,
            _by_status(
                "mailbot_requests", "Change requests by status.", RequestStatus, found.requests
            ),
            _by_status(
                "mailbot_inbound_messages",
                "Stored messages by status (received: not acted on yet).",
                InboundStatus,
                found.inbound,
            ),
            _by_status(
                "mailbot_outbox_mails", "Outbox mails by status.", OutboxStatus, found.outbox
            ),
            GaugeMetricFamily(
                "mailbot_outbox_queued",
                "Outbox mails not sent yet (queued or being sent).",
                waiting,
            ),
            GaugeMetricFamily(
                "mailbot_outbox_oldest_queued_age_seconds",
                "Age of the oldest outbox mail not sent yet (0 when none waits).",
                age,
            ),
            GaugeMetricFamily(
                "mailbot_outbox_dead",
                "Dead letters: outbox mails given up on (see `mailbot outbox retry`).",
                found.outbox.get(OutboxStatus.DEAD, 0),
            ),
        ]


def _by_status(name: str, text: str, statuses: Iterable[str], counts: dict[str, int]) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, text, labels=["status"])
    for status in statuses:
        family.add_metric([str(status)], counts.get(str(status), 0))
    return family


class _Scrape:
    """This process's instruments, then the database's gauges."""

    def __init__(self, registry: CollectorRegistry, database: _DatabaseCollector) -> None:
        self.registry = registry
        self.database = database

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.database.collect()


def exposition(engine: Engine, clock: Clock) -> tuple[bytes, str]:
    """The body of ``GET /metrics`` and its content type (blocking: reads the database)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    scrape = _Scrape(enable(), _DatabaseCollector(engine, clock))
    return generate_latest(scrape), CONTENT_TYPE_LATEST
