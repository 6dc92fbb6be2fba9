"""Logging set-up: one line per record (text, or a JSON object with ``[log]
format = "json"``), and floods of identical records folded.

Under attack or a fault the same error can repeat thousands of times a second
(a listener out of file descriptors, a client sending garbage in a loop), and
a log that fills the disk is a second outage. The first of identical records
(same logger, level and message) within a window is logged; the others are
counted, and when the window is over one more line says how many there were.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REPEAT_WINDOW_SECONDS = 60.0
MAX_TRACKED = 1000
"""Distinct messages remembered at once; beyond, the oldest are reported and forgotten."""
SWEEP_SECONDS = 1.0
NOISY_LOGGERS = ("apscheduler", "mail.log", "uvicorn.error", "flufl.bounce", "alembic")
"""Libraries that log every connection or job run at INFO."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("inbound_id", "request_id", "outcome", "event")
"""What a record may say about the mail it concerns (``extra=`` of a log call),
as fields of its own in JSON."""
_REQUEST_NOTE = "mailbot.log.request_id"

Key = tuple[str, int, str]


@dataclass
class _Seen:
    first: float
    repeats: int = 0


class RepeatFilter(logging.Filter):
    """A handler's filter that passes the first of identical records within a window."""

    def __init__(
        self,
        handler: logging.Handler,
        window: float = REPEAT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.window = window
        self.clock = clock
        self.seen: dict[Key, _Seen] = {}
        self.lock = threading.Lock()
        self.next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeat_summary", False):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self.lock:
            due = self._sweep(now) if now >= self.next_sweep else []
            seen = self.seen.get(key)
            passes = seen is None or now - seen.first >= self.window
            if passes:
                if seen is not None and seen.repeats:
                    due.append((key, seen))
                self.seen[key] = _Seen(now)
            else:
                assert seen is not None
                seen.repeats += 1
        self._report(due, now)
        return passes

    def flush(self) -> None:
        """Report every pending count now (at exit)."""
        now = self.clock()
        with self.lock:
            due = [(key, seen) for key, seen in self.seen.items() if seen.repeats]
            self.seen.clear()
        self._report(due, now)

    def _sweep(self, now: float) -> list[tuple[Key, _Seen]]:
        """Forget the messages whose window is over, or the oldest when too many."""
        self.next_sweep = now + SWEEP_SECONDS
        excess = len(self.seen) - MAX_TRACKED
        over = [
            key
            for index, (key, seen) in enumerate(self.seen.items())
            if index < excess or now - seen.first >= self.window
        ]
        forgotten = [(key, self.seen.pop(key)) for key in over]
        return [(key, seen) for key, seen in forgotten if seen.repeats]

    def _report(self, due: list[tuple[Key, _Seen]], now: float) -> None:
        for (name, level, message), seen in due:
            summary = logging.makeLogRecord(
                {
                    "name": name,
                    "levelno": level,
                    "levelname": logging.getLevelName(level),
                    "msg": "%s (repeated %d more times in %d s)",
                    "args": (message, seen.repeats, max(1, round(now - seen.first))),
                    "repeat_summary": True,
                }
            )
            self.handler.handle(summary)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context fields
    the record carries, and the exception if any.

    Log calls never pass a token, but a message or an exception may quote text
    that came in by mail: every string goes through ``redact.text`` first, so
    tokens, links to the link page and reply keys show ``[redacted]``.
    """

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, int) else self.redact(str(value))
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


_handler: logging.Handler | None = None
"""The handler ``configure`` installed, whose format ``use_format`` sets."""


def configure(level: int) -> None:
    """Root logging at ``level`` on stderr, with repeats folded.

    Like ``logging.basicConfig``, it sets up only a process that has no
    handler yet: a program that embeds mailbot (or a test runner capturing
    logs) keeps its own handlers and level.
    """
    global _handler
    root = logging.getLogger()
    if not root.handlers:
        _handler = handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        repeats = RepeatFilter(handler)
        handler.addFilter(repeats)
        atexit.register(repeats.flush)
        root.addHandler(handler)
        root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def use_format(kind: str, bot_local_part: str) -> None:
    """``[log] format`` once the settings are read: ``text`` or ``json`` lines on
    the handler ``configure`` installed (an embedding program's are left alone)."""
    if _handler is None:
        return
    if kind != "json":
        _handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        return
    from mailbot.mailparse import redact

    _handler.setFormatter(JsonFormatter(lambda text: redact.text(text, bot_local_part)))


def note_request(info: MutableMapping[str, Any], request_id: str | None) -> None:
    """Remember the first request a unit of work concerns (in its session's
    ``info``), for the line that logs its outcome."""
    if request_id:
        info.setdefault(_REQUEST_NOTE, request_id)


def noted_request(info: MutableMapping[str, Any]) -> str | None:
    found = info.get(_REQUEST_NOTE)
    return found if isinstance(found, str) else None


def first_line(exc: BaseException) -> str:
    """An exception as one short log line: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
