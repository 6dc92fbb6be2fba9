"""``mailbot serve``: the SMTP listener, the link pages, the scheduler and the outbox
sender in one process and one asyncio loop.

With ``[workers] processes = N`` (N >= 1) the listener only stores, and N
worker processes (``mailbot.supervisor``, ``mailbot.worker``) act on the stored
mail; the rest of this paragraph is for N = 0, where serve acts on it itself.
Blocking database and SMTP work runs in worker threads, so the loop only
moves bytes. Fresh mail is acted on right after its 250; a rescuer catches up
everything stored but not yet acted on (after a crash, a database outage, a
full disk): in small batches, at once while there is a backlog, with backoff
while the database fails, and never ahead of fresh mail for long. The sender
drains the outbox when mail is queued and every few seconds. SIGTERM or
SIGINT stops the listeners first, lets what is in flight finish (the mail
being sent included), sends what it queued, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from functools import partial
from typing import Any, TypeVar

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailbot import logs, metrics
from mailbot.adapters import outgoing_transport
from mailbot.adapters.connections import (
    ACCEPT_BACKLOG,
    ConnectionLimiter,
    ListenerCaps,
    fit_caps,
    raise_descriptor_limit,
)
from mailbot.adapters.imap_in import ImapReader
from mailbot.adapters.smtp_in import Activity, GroupCommitWriter, InboundHandler, smtp_factory
from mailbot.adapters.web import create_app
from mailbot.adapters.web.protocol import WebLimits, limited_protocol
from mailbot.config import Settings
from mailbot.errors import BacklogStalled, StorageUnavailable
from mailbot.outgoing.outbox import hand_over_promptly
from mailbot.service import Mailbot
from mailbot.supervisor import Supervisor, worker_command

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_SECONDS = 5
"""The sender's pace when nothing kicks it (mail queued by a commit does)."""
FLUSH_MAX_BACKOFF_SECONDS = 60
RESCUE_IDLE_SECONDS = 2.0
"""How often the rescuer looks for stored mail nobody is acting on: also how
soon mail stored by ``mailbot process --store-only`` (another process) is acted
on. One indexed query, so looking often costs nothing noticeable."""
RESCUE_BACKLOG_SECONDS = 2.0
"""Its pace between full passes while a backlog remains."""
RESCUE_MAX_BACKOFF_SECONDS = 30.0
"""Its longest wait after a database error: the bound on catching up once it is back."""
RESCUE_BATCH = 10
"""Messages per rescue turn; fresh mail waits at most one turn."""
STOP_TIMEOUT_SECONDS = 10.0
PROCESS_DEFER_SECONDS = 5.0
QUIET_SECONDS = 0.005
"""No client has spoken in a mail transaction for this long, and no message
waits for its commit: arrivals have paused (see ``smtp_in.Activity``). Short:
in a burst clients speak far more often, and every message acted on between
bursts waits this long first (at 0.02 s that capped paced replies near 33 a
second on two cores)."""
TO_PROCESS_CAP = 1000
"""Fresh messages remembered for acting on at once; beyond, their ids are
dropped and the rescuer finds them in the database, so that memory does not
grow with a backlog."""


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Runtime:
    def __init__(
        self,
        settings: Settings,
        bot: Mailbot | None = None,
        worker_options: tuple[str, ...] = (),
    ) -> None:
        """``worker_options`` go before ``worker`` on the command line of the
        worker processes (``--config PATH``), with ``[workers] processes`` >= 1."""
        self.settings = settings
        self.acts_here = settings.workers.processes == 0
        self.supervisor = Supervisor(settings.workers.processes, worker_command(worker_options))
        self.bot = bot or Mailbot.from_settings(settings)
        metrics.enable()  # this process's counters, read by /metrics
        self.store_thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.work_thread = ThreadPoolExecutor(1, thread_name_prefix="process")
        self.send_thread = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.flush_wanted = asyncio.Event()
        self.stop_deadline = float("inf")
        self.background: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.imap_stop = threading.Event()
        self.to_process: asyncio.Queue[tuple[int, float]] = asyncio.Queue(TO_PROCESS_CAP)
        self.listener = Activity()
        self.imap_thread: threading.Thread | None = None

    async def _blocking(
        self, pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any
    ) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, partial(function, *args))

    async def run(self) -> None:
        await self._blocking(self.work_thread, self.bot.check_schema)
        # Both ports are taken before anything starts, so that one in use is a
        # clean error (uvicorn would exit the process from inside its task).
        web_socket = _bind(self.settings.web.host, self.settings.web.port)
        writer = GroupCommitWriter(self.bot, partial(self._blocking, self.store_thread))
        writer.start()
        processor = asyncio.create_task(self._processor(), name="processor")
        try:
            smtp = await self._start_smtp(writer)
        except OSError:
            web_socket.close()
            processor.cancel()
            await writer.stop()
            raise
        self._start_background()
        web = _QuietServer(self._web_config())
        web_task = asyncio.create_task(web.serve(sockets=[web_socket]), name="web")
        self._schedule()
        loop = asyncio.get_running_loop()

        def mail_queued() -> None:  # called from worker threads, after their commit
            loop.call_soon_threadsafe(self.kick_flush)

        self.bot.on_mail_queued.append(mail_queued)
        self._start_imap()
        self._on_signals()
        while not web.started and not web_task.done():
            await asyncio.sleep(0.01)
        if web_task.done():  # uvicorn could not start (port taken...)
            await self._stop(smtp, writer, processor, web, web_task)
            raise OSError(f"the web server could not listen on port {self.settings.web.port}")
        self.ready.set()
        log.info(
            "mailbot serving: smtp %s:%d, web %s:%d",
            self.settings.smtp.host,
            self.settings.smtp.port,
            self.settings.web.host,
            self.settings.web.port,
        )
        await self.stopping.wait()
        await self._stop(smtp, writer, processor, web, web_task)

    @functools.cached_property
    def caps(self) -> ListenerCaps:
        """Both listeners' connection caps, within the open-file limit (raised first)."""
        smtp, web = self.settings.smtp, self.settings.web
        return fit_caps(smtp.max_connections, web.max_connections, raise_descriptor_limit())

    async def _start_smtp(self, writer: GroupCommitWriter) -> asyncio.Server:
        bot, smtp = self.settings.bot, self.settings.smtp
        domains = [bot.domain, *smtp.domains]
        handler = InboundHandler(
            writer, domains, self.on_stored, smtp.max_recipients, self.listener
        )
        factory = smtp_factory(handler, bot.domain, smtp, self.caps.smtp)
        return await asyncio.get_running_loop().create_server(
            factory, smtp.host, smtp.port, backlog=ACCEPT_BACKLOG
        )

    def _web_config(self) -> uvicorn.Config:
        """uvicorn with deadlines for headers, bodies and idle connections, and caps."""
        web = self.settings.web
        limiter = ConnectionLimiter("web", self.caps.web, web.max_connections_per_client)
        limits = WebLimits(limiter, web.header_timeout_seconds, web.body_timeout_seconds)
        return uvicorn.Config(
            create_app(self.bot),
            host=web.host,
            port=web.port,
            http=limited_protocol(limits),
            timeout_keep_alive=web.keepalive_seconds,
            backlog=ACCEPT_BACKLOG,
            log_config=None,  # its records go through mailbot's handlers and filters
            log_level="warning",
            lifespan="off",
            access_log=False,
        )

    def _schedule(self) -> None:
        """The sweep on APScheduler: one run at a time, missed runs folded into one.

        A sweep that outlasts its interval makes APScheduler skip the next run
        with a warning; that is expected, so the warning is filtered out.
        """
        logging.getLogger("apscheduler.scheduler").addFilter(_NotAlreadyRunning())
        self.scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.settings.policy.sweep_seconds,
            id="sweep",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self.scheduler.start()

    def _start_background(self) -> None:
        """The sender; and the rescuer, or the worker processes that act instead."""
        self.background = [asyncio.create_task(self._sender(), name="sender")]
        if self.acts_here:
            self.background.append(asyncio.create_task(self._rescuer(), name="rescuer"))
        else:
            self.supervisor.start()

    def _start_imap(self) -> None:
        """The agency mailbox reader: imapclient blocks, so it gets a thread of its own."""
        if not self.settings.imap.enabled:
            return
        reader = ImapReader(self.settings.imap, self.bot, self.imap_stop)
        self.imap_thread = threading.Thread(target=reader.run, name="imap", daemon=True)
        self.imap_thread.start()

    def _on_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded (tests): whoever started us sets ``stopping``
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)

    def on_stored(self, inbound_id: int) -> None:
        """Act on a message once its 250 is sent; if that fails, or too many wait
        already, the rescuer catches up. With worker processes, they act on it."""
        if not self.acts_here:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self.to_process.put_nowait((inbound_id, asyncio.get_running_loop().time()))

    async def _processor(self) -> None:
        """Acts on stored mail one message at a time, after the answers.

        Parsing and acting cost far more than storing, and share the process
        with the listener: while mail keeps arriving, a message waits for a
        pause in arrivals, or until it is PROCESS_DEFER_SECONDS old, so that
        answering 250 stays fast in a burst and no message waits for long.
        """
        loop = asyncio.get_running_loop()
        while True:
            inbound_id, arrived = await self.to_process.get()
            deadline = arrived + PROCESS_DEFER_SECONDS
            while self.listener.quiet_for(loop.time()) < QUIET_SECONDS and loop.time() < deadline:
                await asyncio.sleep(QUIET_SECONDS)
            try:
                await self._blocking(self.work_thread, self.bot.process_inbound, inbound_id)
            except StorageUnavailable as exc:
                reason = logs.first_line(exc)
                log.warning("message %d stays stored, to retry: %s", inbound_id, reason)
            except Exception:
                log.exception("message %d could not be processed", inbound_id)
            finally:
                self.to_process.task_done()

    async def _rescuer(self) -> None:
        """Acts on every message stored but not acted on, whatever left it so.

        It walks the backlog by id in turns of RESCUE_BATCH, letting fresh mail
        go first between turns (for at most PROCESS_DEFER_SECONDS). A database
        error ends the pass with a growing pause (up to
        RESCUE_MAX_BACKOFF_SECONDS), and the next pass starts past the message
        that failed, which is tried again when the walk wraps around: a message
        that keeps failing never holds back the others.
        """
        cursor, failures, pause = 0, 0, 0.0
        while True:
            await asyncio.sleep(pause)
            await self._fresh_mail_first()
            started = cursor
            try:
                done = await self._blocking(
                    self.work_thread, self.bot.process_pending, cursor, RESCUE_BATCH
                )
            except BacklogStalled as exc:
                cursor, failures = exc.inbound_id, failures + 1
                pause = min(2.0**failures, RESCUE_MAX_BACKOFF_SECONDS)
                log.warning("stored mail waits: %s; retrying in %.0fs", logs.first_line(exc), pause)
                continue
            except Exception as exc:  # the backlog could not even be listed
                failures += 1
                pause = min(2.0**failures, RESCUE_MAX_BACKOFF_SECONDS)
                log.warning("stored mail waits: %s; retrying in %.0fs", logs.first_line(exc), pause)
                continue
            failures = 0
            if done.seen:
                log.info("caught up on %d stored message(s)", done.seen)
            cursor = done.last_id if done.more else 0
            if done.more or started > 0:
                pause = 0.0
            else:
                pause = RESCUE_BACKLOG_SECONDS if done.seen else RESCUE_IDLE_SECONDS

    async def _fresh_mail_first(self) -> None:
        """Wait while fresh mail is waiting to be acted on, for a bounded time."""
        if self.to_process.empty():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.to_process.join(), PROCESS_DEFER_SECONDS)

    async def _nap(self, kick: asyncio.Event, seconds: float | None) -> None:
        """Sleep ``seconds``, or less if ``kick`` is set; None: until it is set."""
        if seconds is None:
            await kick.wait()
        elif seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), seconds)
        kick.clear()

    async def _sender(self) -> None:
        """Drains the outbox when mail is queued, and every FLUSH_SECONDS; backs
        off while flushing fails (the database is down).

        With worker processes, whose senders drain the outbox and retry what
        failed, serve sends only when its own commits queued mail (a link-page
        decision, the sweep, IMAP), so that a burst's rendering and sending stay
        out of the listener's process.
        """
        failures = 0
        while not self.stopping.is_set():
            pause = min(FLUSH_SECONDS * 2**failures, FLUSH_MAX_BACKOFF_SECONDS)
            await self._nap(self.flush_wanted, pause if self.acts_here or failures else None)
            if self.stopping.is_set():
                return
            flushed = await self._blocking(self.send_thread, self.flush)
            failures = 0 if flushed else failures + 1

    def kick_flush(self) -> None:
        if not self.stopping.is_set():
            self.flush_wanted.set()

    def _keep_sending(self) -> bool:
        """Until stopping, always; then until the stop deadline, mail by mail."""
        return not self.stopping.is_set() or time.monotonic() < self.stop_deadline

    def flush(self) -> bool:
        try:
            # A transport per flush: a session is never shared between threads.
            report = self.bot.flush_outbox(outgoing_transport(self.settings), self._keep_sending)
        except Exception as exc:
            log.warning("outbox flush failed, will try again: %s", logs.first_line(exc))
            return False
        if report.sent or report.retried or report.dead:
            log.debug("outbox: %s", report)
        return True

    def sweep(self) -> None:
        try:
            self.bot.sweep()
        except Exception:
            log.exception("sweep failed; will try again")

    async def _stop(
        self,
        smtp: asyncio.Server,
        writer: GroupCommitWriter,
        processor: asyncio.Task[None],
        web: uvicorn.Server,
        web_task: asyncio.Task[None],
    ) -> None:
        log.info("stopping: no new connections; finishing what is in flight")
        self.stop_deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        smtp.close()
        web.should_exit = True
        self.imap_stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(smtp.wait_closed(), STOP_TIMEOUT_SECONDS / 2)
        await writer.stop()
        # Mail stored but not yet acted on is safe: the next start picks it up.
        # Only the message being processed is finished (the work thread's shutdown).
        processor.cancel()
        sender, *rescuer = self.background
        for task in rescuer:
            task.cancel()
        await asyncio.gather(processor, *rescuer, return_exceptions=True)
        await self.supervisor.stop(STOP_TIMEOUT_SECONDS)
        self.flush_wanted.set()  # the sender wakes, finishes its flush and ends
        await asyncio.wait({sender}, timeout=STOP_TIMEOUT_SECONDS)
        await asyncio.wait({web_task}, timeout=STOP_TIMEOUT_SECONDS)
        if self.imap_thread is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, self.imap_thread.join, STOP_TIMEOUT_SECONDS
            )
        self.scheduler.shutdown(wait=True)
        # The message being acted on is finished, then what it queued is sent.
        await asyncio.get_running_loop().run_in_executor(None, self.work_thread.shutdown)
        await self._blocking(self.send_thread, self.flush)
        self.store_thread.shutdown()
        self.send_thread.shutdown()
        self.bot.engine.dispose()
        log.info("stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"web {host}:{port}: {exc.strerror}") from None
    return sock


def serve(settings: Settings, worker_options: tuple[str, ...] = ()) -> None:
    hand_over_promptly()
    asyncio.run(Runtime(settings, worker_options=worker_options).run())


class _NotAlreadyRunning(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)
