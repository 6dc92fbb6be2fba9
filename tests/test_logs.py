"""Floods of identical log records are folded into one line and a count."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from mailbot.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


Logged = tuple[logging.Logger, io.StringIO, RepeatFilter]


@pytest.fixture
def logged(clock: Clock) -> Iterator[Logged]:
    """A logger writing ``LEVEL name: message`` lines through a folding handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    repeats = RepeatFilter(handler, window=60, clock=clock)
    handler.addFilter(repeats)
    logger = logging.getLogger("mailbot.test.flood")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream, repeats
    logger.removeHandler(handler)


def test_a_flood_is_one_line_then_one_line_with_its_count(logged: Logged, clock: Clock) -> None:
    logger, stream, _ = logged
    for _ in range(5000):
        logger.error("socket.accept() out of system resource")
    assert stream.getvalue().splitlines() == [
        "ERROR mailbot.test.flood: socket.accept() out of system resource"
    ]
    clock.now += 61
    logger.info("something else")
    assert stream.getvalue().splitlines()[1:] == [
        "ERROR mailbot.test.flood: socket.accept() out of system resource"
        " (repeated 4999 more times in 61 s)",
        "INFO mailbot.test.flood: something else",
    ]


def test_different_messages_levels_and_loggers_are_not_folded_together(logged: Logged) -> None:
    logger, stream, _ = logged
    logger.warning("refused 10.0.0.1")
    logger.warning("refused 10.0.0.2")
    logger.error("refused 10.0.0.1")
    logging.getLogger("mailbot.test.flood.other").warning("refused 10.0.0.1")
    assert len(stream.getvalue().splitlines()) == 4


def test_a_message_is_logged_again_once_its_window_is_over(logged: Logged, clock: Clock) -> None:
    logger, stream, _ = logged
    logger.warning("database unavailable")
    clock.now += 61
    logger.warning("database unavailable")
    assert len(stream.getvalue().splitlines()) == 2  # nothing was folded: no count line


def test_pending_counts_are_reported_at_exit(logged: Logged) -> None:
    logger, stream, repeats = logged
    for _ in range(3):
        logger.warning("Invalid HTTP request received.")
    repeats.flush()
    assert (
        stream.getvalue()
        .splitlines()[-1]
        .endswith("Invalid HTTP request received. (repeated 2 more times in 1 s)")
    )
