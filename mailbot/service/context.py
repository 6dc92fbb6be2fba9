"""What every use case shares: settings, database, clock and mailer, and the
translation of database outages into the service's own error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session

from mailbot.clock import Clock
from mailbot.config import Settings
from mailbot.errors import StorageUnavailable, TooManyAttempts
from mailbot.outgoing.mailer import Mailer
from mailbot.storage.limits import RateLimits

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ServiceContext:
    """Handed to each use-case object, so that none reaches into another for them."""

    settings: Settings
    engine: Engine
    clock: Clock
    mailer: Mailer
    limits: RateLimits

    def check_token_attempts(self, session: Session, actor: str) -> None:
        """Refuse to look a token up for an address that guessed wrong too often
        this hour: a guesser learns nothing more, whatever they type."""
        if not self.limits.bad_tokens.allows(session, actor, self.clock.now()):
            raise TooManyAttempts("")

    def reply_address(self, key: str) -> str:
        """The address whose plus part names a token (replying to it answers that mail)."""
        bot = self.settings.bot
        return f"{bot.local_part}+{key.lower()}@{bot.domain}"


def is_outage(exc: BaseException) -> bool:
    """Whether a database error means "unavailable now" (try again later) rather
    than a fault of what was asked: locked, unreachable, or a lost connection."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unavailable(exc: DBAPIError) -> StorageUnavailable:
    """The service's error for an outage, saying what the database said."""
    return StorageUnavailable(str(exc.orig or exc).strip())


class OutagesTranslated:
    """A block whose database outages raise StorageUnavailable, so that callers
    of the service never see the driver's errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, DBAPIError) and is_outage(exc):
            raise unavailable(exc) from exc


def translates_outages(method: Callable[P, R]) -> Callable[P, R]:
    """A public service method whose database outages raise StorageUnavailable."""

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        with OutagesTranslated():
            return method(*args, **kwargs)

    return translated
