"""``mailbot serve``: the SMTP listener, the link pages, the scheduler and the outbox
sender in one process and one asyncio loop.

Blocking database and SMTP work runs in worker threads, so the loop only
moves bytes. SIGTERM or SIGINT stops the listeners first, lets what is in
flight finish, sends what it queued, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailbot import db
from mailbot.adapters import outgoing_transport
from mailbot.adapters.connections import (
    ACCEPT_BACKLOG,
    ConnectionLimiter,
    ListenerCaps,
    fit_caps,
    raise_descriptor_limit,
)
from mailbot.adapters.imap_in import ImapReader
from mailbot.adapters.smtp_in import GroupCommitWriter, InboundHandler, smtp_factory
from mailbot.adapters.web import create_app
from mailbot.adapters.web_protocol import WebLimits, limited_protocol
from mailbot.config import Settings
from mailbot.service import Mailbot

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_SECONDS = 5
RESCUE_SECONDS = 60
STOP_TIMEOUT_SECONDS = 10.0
PROCESS_DEFER_SECONDS = 5.0
QUIET_SECONDS = 0.02


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Runtime:
    def __init__(self, settings: Settings, bot: Mailbot | None = None) -> None:
        self.settings = settings
        self.bot = bot or Mailbot.from_settings(settings)
        self.store_thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.work_thread = ThreadPoolExecutor(1, thread_name_prefix="process")
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.imap_stop = threading.Event()
        self.to_process: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.last_arrival = 0.0
        self.imap_thread: threading.Thread | None = None
        self.processing: set[asyncio.Future[Any]] = set()

    async def _blocking(
        self, pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any
    ) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, partial(function, *args))

    async def run(self) -> None:
        await self._blocking(self.work_thread, db.check_schema, self.bot.engine)
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
        web = _QuietServer(self._web_config())
        web_task = asyncio.create_task(web.serve(sockets=[web_socket]), name="web")
        self._schedule()
        loop = asyncio.get_running_loop()

        def mail_queued() -> None:  # called from worker threads, after their commit
            loop.call_soon_threadsafe(self.kick_flush)

        self.bot.on_mail_queued.append(mail_queued)
        self._start_imap()
        self._on_signals()
        self.kick_processing()
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
        handler = InboundHandler(writer, domains, self.on_stored, smtp.max_recipients)
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
        jobs = (
            ("flush", self.flush, FLUSH_SECONDS),
            ("rescue", self.kick_processing, RESCUE_SECONDS),
            ("sweep", self.sweep, self.settings.policy.sweep_seconds),
        )
        for name, job, seconds in jobs:
            self.scheduler.add_job(
                job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
            )
        self.scheduler.start()

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
        """Act on a message once its 250 is sent; a crash before is caught up by ``rescue``."""
        self.last_arrival = asyncio.get_running_loop().time()
        self.to_process.put_nowait((inbound_id, self.last_arrival))

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
            while loop.time() - self.last_arrival < QUIET_SECONDS and loop.time() < deadline:
                await asyncio.sleep(QUIET_SECONDS)
            try:
                await self._blocking(self.work_thread, self.bot.process_inbound, inbound_id)
            except Exception:
                log.exception("message %d could not be processed; it stays stored", inbound_id)
            finally:
                self.to_process.task_done()

    def kick_processing(self) -> None:
        """Pick up messages stored but never processed (after a crash or an error)."""
        future = asyncio.ensure_future(self._rescue())
        self.processing.add(future)
        future.add_done_callback(self.processing.discard)

    async def _rescue(self) -> None:
        try:
            await self._blocking(self.work_thread, self.bot.process_pending)
        except Exception:
            log.exception("catching up stored messages failed; will try again")

    def kick_flush(self) -> None:
        job = self.scheduler.get_job("flush")
        if job is not None and not self.stopping.is_set():
            job.modify(next_run_time=datetime.now(UTC))

    def flush(self) -> None:
        try:
            # A transport per flush: a session is never shared between threads.
            report = self.bot.flush_outbox(outgoing_transport(self.settings))
        except Exception:
            log.exception("outbox flush failed; will try again")
            return
        if report.sent or report.retried or report.dead:
            log.debug("outbox: %s", report)

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
        smtp.close()
        web.should_exit = True
        self.imap_stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(smtp.wait_closed(), STOP_TIMEOUT_SECONDS / 2)
        await writer.stop()
        # Mail stored but not yet acted on is safe: the next start picks it up.
        # Only the message being processed is finished (the work thread's shutdown).
        processor.cancel()
        await asyncio.gather(processor, return_exceptions=True)
        if self.processing:
            await asyncio.wait(set(self.processing), timeout=STOP_TIMEOUT_SECONDS)
        await asyncio.wait({web_task}, timeout=STOP_TIMEOUT_SECONDS)
        if self.imap_thread is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, self.imap_thread.join, STOP_TIMEOUT_SECONDS
            )
        self.scheduler.shutdown(wait=True)
        await self._blocking(self.work_thread, self.flush)
        self.store_thread.shutdown()
        self.work_thread.shutdown()
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


def serve(settings: Settings) -> None:
    asyncio.run(Runtime(settings).run())
