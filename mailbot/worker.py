"""``mailbot worker``: acts on stored mail, apart from the listener that stores it.

A worker claims the oldest stored message nobody is acting on, acts on it and
commits the effects with the message's new status, then the next one; when
none waits it looks again after a short sleep that grows while it stays idle.
Any number of workers, on any number of machines, share the work without
acting on one message twice (``Receiving.process_next``). A sender thread
drains the outbox after each commit that queued mail and every few seconds,
so that answers go out without waiting for ``serve``.

``serve`` with ``[workers] processes = N`` starts N of these with
``--supervised``: the worker then also stops when its standard input, a pipe
from ``serve``, reaches its end (``serve`` is gone, however it died), and the
kernel sends it SIGTERM when ``serve`` exits. SIGTERM or SIGINT: the message
in hand is finished, what it queued is sent, and the worker exits 0.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType

from mailbot import logs
from mailbot.adapters import outgoing_transport
from mailbot.config import Settings
from mailbot.errors import BacklogStalled, StorageUnavailable
from mailbot.outgoing.outbox import hand_over_promptly
from mailbot.service import Mailbot

log = logging.getLogger(__name__)

IDLE_MIN_SECONDS = 0.02
IDLE_MAX_SECONDS = 0.25
"""The sleep between looks while no mail waits: it doubles from the minimum up
to this, so a fresh message waits at most this long, and an idle worker costs
one indexed query four times a second (see ``IdlePace``)."""
ACTIVE_SECONDS = 1.0
"""For this long after acting on a message, the sleep stays at the minimum."""
QUIET_SECONDS = 0.005
"""No message stored for this long: arrivals have paused (see ``Arrivals``),
unless they came at BURST_RATE."""
BURST_RATE = 200.0
"""Messages a second, over the last BURST_WINDOW_SECONDS, that make a burst
whatever the gap since the last one: that gap is a batch's commit."""
BURST_WINDOW_SECONDS = 0.1
BURST_LOOK_SECONDS = 0.05
"""The pace of looks at a burst at BURST_RATE: every worker looks, each look is
a query, and a faster pace would take the listener's CPU for no gain."""
DEFER_SECONDS = 5.0
"""The longest a burst of arrivals holds acting back."""
OUTAGE_MAX_BACKOFF_SECONDS = 30.0
FLUSH_SECONDS = 5.0
"""The sender's pace when no commit kicks it."""
STOP_SEND_SECONDS = 5.0
"""At stop, how long the sender may go on sending what was queued."""
PR_SET_PDEATHSIG = 1
STDIN = 0


class Worker:
    """The loop of one worker process: claim, act, commit; the outbox beside it."""

    def __init__(self, settings: Settings, bot: Mailbot | None = None) -> None:
        self.settings = settings
        self.bot = bot or Mailbot.from_settings(settings)
        self.stopping = threading.Event()
        self.flush_wanted = threading.Event()
        self.stop_deadline = float("inf")
        self.bot.on_mail_queued.append(self.flush_wanted.set)

    def run(self) -> None:
        """Act on stored mail until ``stopping`` is set, then send what was queued."""
        self.bot.check_schema()
        sender = threading.Thread(target=self._sender, name="outbox", daemon=True)
        sender.start()
        log.info("mailbot worker acting on stored mail")
        try:
            self._act_until_stopped()
        finally:
            self.stop_deadline = time.monotonic() + STOP_SEND_SECONDS
            self.flush_wanted.set()
            sender.join(STOP_SEND_SECONDS + 5)
            self.bot.engine.dispose()
            log.info("worker stopped")

    def _act_until_stopped(self) -> None:
        """One message after another, from the oldest; past the end of the
        backlog, from the start again (a message an outage skipped), and idle
        naps while none waits."""
        after, failures = 0, 0
        arrivals, idle = Arrivals(self.bot.newest_inbound_id), IdlePace()
        while not self.stopping.is_set():
            try:
                if held := arrivals.hold():
                    self.stopping.wait(held)
                    continue
                done = self.bot.process_next(after)
            except BacklogStalled as exc:
                after, failures = exc.inbound_id, failures + 1
                self._outage(exc, failures)
                continue
            except StorageUnavailable as exc:
                failures += 1
                self._outage(exc, failures)
                continue
            failures = 0
            if done is not None:
                after = done
                idle.acted()
            elif after:
                after = 0  # the end of the backlog: look from the start once more
            else:
                self.stopping.wait(idle.nap())

    def _outage(self, exc: Exception, failures: int) -> None:
        pause = min(2.0**failures, OUTAGE_MAX_BACKOFF_SECONDS)
        log.warning("stored mail waits: %s; retrying in %.0fs", logs.first_line(exc), pause)
        self.stopping.wait(pause)

    def _sender(self) -> None:
        """Drains the outbox when a commit queued mail and every FLUSH_SECONDS,
        until the worker stops; then once more, within the stop deadline."""
        while not self.stopping.is_set():
            self.flush_wanted.wait(FLUSH_SECONDS)
            self.flush_wanted.clear()
            self._flush()
        self._flush()

    def _keep_sending(self) -> bool:
        return not self.stopping.is_set() or time.monotonic() < self.stop_deadline

    def _flush(self) -> None:
        try:
            # A transport per flush, as in serve: a session is never reused for long.
            self.bot.flush_outbox(outgoing_transport(self.settings), self._keep_sending)
        except Exception as exc:
            log.warning("outbox flush failed, will try again: %s", logs.first_line(exc))


class IdlePace:
    """How long a worker sleeps when no stored message waits.

    The sleep doubles from IDLE_MIN_SECONDS up to IDLE_MAX_SECONDS, so that an
    idle worker costs next to nothing; but within ACTIVE_SECONDS of the last
    message acted on it stays at the minimum. Replies paced a few a second
    are often more than a few sleeps apart, and each would otherwise wait for
    the end of a long sleep begun just before it arrived.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.next = IDLE_MIN_SECONDS
        self.acted_at = -float("inf")

    def acted(self) -> None:
        self.next = IDLE_MIN_SECONDS
        self.acted_at = self.clock()

    def nap(self) -> float:
        """The sleep to take now."""
        nap = self.next
        if self.clock() - self.acted_at >= ACTIVE_SECONDS:
            self.next = min(nap * 2, IDLE_MAX_SECONDS)
        return nap


class Arrivals:
    """Whether acting waits for a burst the listener is taking in, and how long.

    Acting on a message costs far more CPU than storing one, and workers
    usually share the machine with the listener: while messages keep being
    stored, acting waits, so that a burst is taken in at the listener's full
    speed and acted on just after. A burst is yielded to for at most
    DEFER_SECONDS, then acting goes on beside it until arrivals pause: no
    message waits longer for it.

    The burst is seen from the database, by the newest stored id. Moving
    within QUIET_SECONDS is a burst; but the listener commits a burst in
    batches, and on a loaded machine a batch's commit outlasts that, so a
    rate of BURST_RATE or more over the last BURST_WINDOW_SECONDS is one
    too. Paced replies (tens a second) stay far below that rate, and are
    acted on after QUIET_SECONDS. ``serve`` acting itself sees the burst in
    its listener instead (``smtp_in.Activity``), commits in progress included.
    """

    def __init__(
        self, newest: Callable[[], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.newest = newest
        self.clock = clock
        self.last_id = -1
        self.moved_at = self.looked_at = -float("inf")
        self.looks: deque[tuple[float, int]] = deque()
        """(when, newest id) of each look: the last one at or before the window's
        start, then those within it."""
        self.yielding_since: float | None = None

    def hold(self) -> float:
        """How long to wait before looking again; 0.0: act now."""
        now = self.clock()
        if now - self.looked_at >= QUIET_SECONDS:
            self._look(now)
        if self._at_burst_rate(now):
            held = BURST_LOOK_SECONDS
        elif now - self.moved_at < QUIET_SECONDS:
            held = QUIET_SECONDS
        else:
            self.yielding_since = None  # a pause: the next burst is yielded to again
            return 0.0
        if self.yielding_since is None:
            self.yielding_since = now
        return held if now - self.yielding_since < DEFER_SECONDS else 0.0

    def _look(self, now: float) -> None:
        self.looked_at = now
        newest = self.newest()
        if newest != self.last_id:
            self.last_id, self.moved_at = newest, now
        self.looks.append((now, newest))
        while len(self.looks) > 1 and self.looks[1][0] <= now - BURST_WINDOW_SECONDS:
            self.looks.popleft()

    def _at_burst_rate(self, now: float) -> bool:
        """Messages stored at BURST_RATE or more since the oldest look kept (over
        BURST_WINDOW_SECONDS at least, so that a long gap between two looks, a
        worker busy acting, is not taken for a burst)."""
        since, first = self.looks[0]
        return self.last_id - first >= BURST_RATE * max(now - since, BURST_WINDOW_SECONDS)


def run_worker(settings: Settings, supervised: bool = False) -> None:
    """``mailbot worker``: a Worker in this process, stopped by SIGTERM or SIGINT
    (and, supervised by ``serve``, by the end of standard input)."""
    hand_over_promptly()
    worker = Worker(settings)
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only a reentrant put here: a handler that set the Event itself could
        # run again inside its own Event.set (a second signal) and wait forever
        # for the lock it holds.
        signals.put(signum)

    threading.Thread(target=_stop_on_signal, args=(signals, worker.stopping), daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    if supervised:
        _die_with_parent()
        watcher = threading.Thread(target=_watch_stdin, args=(worker.stopping,), daemon=True)
        watcher.start()
    worker.run()


def _stop_on_signal(signals: queue.SimpleQueue[int], stopping: threading.Event) -> None:
    signals.get()
    stopping.set()


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent (``serve``) exits; elsewhere the
    pipe on standard input does the same job."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("no prctl: the worker stops when its standard input closes")


def _watch_stdin(stopping: threading.Event) -> None:
    """Read standard input until its end: ``serve`` holds the other end of the
    pipe, so its end means ``serve`` is gone."""
    try:  # the bare descriptor: a buffered reader's lock would stall the exit
        while os.read(STDIN, 4096):
            pass
    except OSError:
        pass
    if not stopping.is_set():
        log.warning("serve is gone: stopping")
    stopping.set()
