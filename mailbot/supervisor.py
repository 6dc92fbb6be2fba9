"""The worker processes ``serve`` starts with ``[workers] processes = N``.

Each is ``mailbot worker --supervised``, run by the same interpreter with the
same configuration file and environment. One that exits is started again,
after a pause that doubles (up to RESTART_MAX_SECONDS) while it keeps dying
young. None outlives ``serve``: each holds a pipe from ``serve`` on its
standard input and stops at its end, and on Linux the kernel sends it SIGTERM
when ``serve`` exits, however that happens. ``stop`` sends SIGTERM, lets each
finish the message in hand and send what it queued, and kills what is left
after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
HEALTHY_SECONDS = 60.0
"""A worker that ran this long before exiting is restarted at once backoff-free."""


def worker_command(options: Sequence[str]) -> list[str]:
    """``mailbot [options] worker --supervised`` with this interpreter."""
    return [sys.executable, "-m", "mailbot", *options, "worker", "--supervised"]


class Supervisor:
    """Keeps ``count`` worker processes running until ``stop``."""

    def __init__(self, count: int, command: Sequence[str]) -> None:
        self.count = count
        self.command = list(command)
        self.stopping = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot}")
            for slot in range(1, self.count + 1)
        ]

    async def _keep(self, slot: int) -> None:
        """Run worker ``slot``; start it again whenever it exits, until stopping."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self.stopping:
            started = loop.time()
            status = await self._run_once(slot)
            if self.stopping:
                return
            failures = 0 if loop.time() - started >= HEALTHY_SECONDS else failures + 1
            pause = min(RESTART_MIN_SECONDS * 2 ** (failures - 1), RESTART_MAX_SECONDS)
            pause = pause if failures else 0.0
            log.warning("worker %d %s; starting it again in %.0fs", slot, status, pause)
            await asyncio.sleep(pause)

    async def _run_once(self, slot: int) -> str:
        """Start the worker and wait for its end; how it ended, in words."""
        try:
            # A session of its own: a terminal's Ctrl-C reaches serve alone,
            # which stops its workers in order.
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            return f"could not start: {exc.strerror or exc}"
        self.processes[slot] = process
        log.info("worker %d started (pid %d)", slot, process.pid)
        code = await process.wait()
        del self.processes[slot]
        return f"(pid {process.pid}) {ending(code)}"

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    async def stop(self, timeout: float) -> None:
        """SIGTERM to every worker; after ``timeout``, SIGKILL to those still running."""
        self.stopping = True
        running = list(self.processes.values())
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=timeout)
            for process in running:
                if process.returncode is None:
                    log.warning("worker pid %d did not stop in time: killed", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*late, return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def ending(code: int) -> str:
    """How a process ended, from its exit status: a negative status is the
    signal that killed it, which may be one Python has no name for (a
    real-time signal), and the restart must not wait on naming it."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"
