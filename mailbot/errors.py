"""The errors the core raises, each carrying the code that DESIGN.md pins.

The core raises meaning; adapters map it to an error mail, an HTTP status or
a CLI message. ``detail`` is shown to the person who caused the error, so it
never holds secrets.
"""

from __future__ import annotations


def in_one_line(exc: BaseException) -> str:
    """The first line of an exception's text, or its type's name when it has
    none: what a one-line error message can quote of a library's error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class MailbotError(Exception):
    """Base of every error mailbot reports to a person."""

    code = "internal"

    def __init__(self, detail: str = "", **context: str) -> None:
        super().__init__(detail or self.code)
        self.detail = detail
        self.context = context


class UnknownCommand(MailbotError):
    code = "unknown-command"


class MalformedRequest(MailbotError):
    code = "malformed-request"


class UnknownService(MailbotError):
    code = "unknown-service"


class UnknownContact(MailbotError):
    code = "unknown-contact"


class NotAuthorized(MailbotError):
    code = "not-authorized"


class NotInGoodStanding(MailbotError):
    code = "not-in-good-standing"


class NoChange(MailbotError):
    code = "no-change"


class DuplicateRequest(MailbotError):
    code = "duplicate-request"


class BadToken(MailbotError):
    code = "bad-token"


class TokenUsed(MailbotError):
    code = "token-used"


class RequestClosed(MailbotError):
    code = "request-closed"


class AmbiguousDecision(MailbotError):
    code = "ambiguous-decision"


class TooManyAttempts(MailbotError):
    code = "too-many-attempts"


ERROR_CODES: tuple[str, ...] = tuple(cls.code for cls in MailbotError.__subclasses__())


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class ImportFileError(Exception):
    """An import file cannot be applied; the message says where and why."""


class NotRetryable(Exception):
    """An outbox mail named for a retry is unknown or not dead; the message says which."""


class UnknownRequest(LookupError):
    """An operator named a request that does not exist."""


class ProcessingFailed(Exception):
    """A stored message whose processing failed; it is kept, marked ``failed``."""


class StorageUnavailable(Exception):
    """The database cannot be reached or is locked: nothing was done, try again later.

    The service raises it in place of the database driver's own errors, so that
    adapters decide what an outage means (a 451, a message left in its folder, a
    retry) without knowing which database or library is behind the service.
    """


class BacklogStalled(Exception):
    """Acting on stored mail hit a database error at ``inbound_id``; it stays stored."""

    def __init__(self, inbound_id: int, cause: Exception) -> None:
        super().__init__(f"message {inbound_id}: {cause}")
        self.inbound_id = inbound_id
