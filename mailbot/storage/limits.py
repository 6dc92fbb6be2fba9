"""Rate limits, counted in the database so that every instance on it shares them.

Each limit allows ``limit`` attempts per ``key`` within a sliding ``window``:
answers mailed per address, token resends per request, wrong tokens per
address, and link-page guesses per client network. An attempt is a row of
``rate_hit``; rows older than their window are deleted by the sweep.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailbot import metrics
from mailbot.clock import Clock
from mailbot.config import PolicySettings
from mailbot.storage import rate_hits
from mailbot.storage.engine import transaction

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
"""The window of the per-hour limits."""
GUESS_LIMIT = 20
"""Unknown-token answers of the link page allowed per client within GUESS_WINDOW."""
GUESS_WINDOW = timedelta(minutes=10)


class Limit(StrEnum):
    """What a rate limit counts (the ``kind`` of its rows)."""

    ANSWERS = "answers"
    RESENDS = "resends"
    BAD_TOKENS = "bad-tokens"
    GUESSES = "guesses"


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` attempts per key within ``window``, in the caller's transaction."""

    kind: Limit
    limit: int
    window: timedelta

    def wait(self, session: Session, key: str, now: datetime) -> timedelta | None:
        """How long until ``key`` may try again, or None when it may go on now."""
        count, oldest = rate_hits.hits_since(session, self.kind, key, now - self.window)
        if count < self.limit or oldest is None:
            return None
        return oldest + self.window - now

    def allows(self, session: Session, key: str, now: datetime) -> bool:
        allowed = self.wait(session, key, now) is None
        if not allowed:
            metrics.throttled(self.kind)
        return allowed

    def record(self, session: Session, key: str, now: datetime) -> None:
        """Count one attempt of ``key``."""
        rate_hits.add_hit(session, self.kind, key, now)

    def forget(self, session: Session, now: datetime) -> int:
        """Delete the attempts that fell out of the window; returns how many."""
        return rate_hits.forget_hits(session, self.kind, now - self.window)


def answers(policy: PolicySettings) -> RateLimit:
    """Error, help, status and list mails to one address in an hour."""
    return RateLimit(Limit.ANSWERS, policy.max_answers_per_hour, HOUR)


class RateLimits:
    """The service's limits, with the settings' values; the link page's guesses
    are counted in transactions of their own, since no use case runs around them."""

    def __init__(self, policy: PolicySettings, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.answers = answers(policy)
        self.resends = RateLimit(Limit.RESENDS, 1, HOUR)
        self.bad_tokens = RateLimit(Limit.BAD_TOKENS, policy.max_bad_tokens_per_hour, HOUR)
        self.guesses = RateLimit(Limit.GUESSES, GUESS_LIMIT, GUESS_WINDOW)

    def guess_wait(self, client: str) -> int | None:
        """Seconds until ``client`` may ask the link page again, or None when it may now."""
        with transaction(self.engine) as session:
            wait = self.guesses.wait(session, client, self.clock.now())
        if wait is not None:
            metrics.throttled(self.guesses.kind)
        return None if wait is None else max(1, math.ceil(wait.total_seconds()))

    def guess_missed(self, client: str) -> None:
        """Count one unknown token asked for by ``client``; say so when it hits the limit."""
        now = self.clock.now()
        metrics.bad_token("web")
        with transaction(self.engine) as session:
            self.guesses.record(session, client, now)
            if self.guesses.wait(session, client, now) is not None:
                log.warning("throttling %s: %d unknown tokens lately", client, self.guesses.limit)

    def forget(self, now: datetime) -> int:
        """Delete every attempt that no window counts any more (the sweep does this)."""
        limits = (self.answers, self.resends, self.bad_tokens, self.guesses)
        with transaction(self.engine) as session:
            return sum(limit.forget(session, now) for limit in limits)
