"""The agency mailbox, read over IMAP (imapclient): fetch, hand to the service, then move.

A message leaves the folder only after its effects are committed: to the done
folder once handled, to the failed folder when it cannot be. Instances sharing
a PostgreSQL database read one mailbox in turn (``storage.turns``): one reads,
the others stand by and take over when it stops or dies. If mailbot dies
between the commit and the move, the message is fetched again and recognised
as a duplicate by its Message-ID, so it never acts twice. The reader IDLEs
when the server can (re-issued before servers drop idle clients), polls
otherwise, and reconnects with backoff, catching up on what arrived meanwhile.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import SocketTimeout

from mailbot import logs
from mailbot.config import ImapSettings
from mailbot.errors import ProcessingFailed, StorageUnavailable
from mailbot.service import Mailbot

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0
"""An IDLE's longest wait: then the reader makes sure the mailbox is still its
turn to read, and IDLEs again (far within RFC 2177's 29 minutes)."""
TURN_WAIT_SECONDS = 10.0  # how often a reader standing by asks for its turn
IDLE_SLICE_SECONDS = 1.0  # how often an IDLE wait looks at the stop flag
MAX_BACKOFF_SECONDS = 60.0
FETCH_BATCH = 20
CONNECTION_ERRORS = (IMAPClientError, OSError, socket.timeout, ssl.SSLError)


@dataclass
class Mailbox:
    """What the reader knows of the folder it reads, to notice a UIDVALIDITY change."""

    uidvalidity: int | None = None
    failed_uids: frozenset[int] = frozenset()


class ImapReader:
    def __init__(self, settings: ImapSettings, bot: Mailbot, stop: threading.Event) -> None:
        self.settings = settings
        self.bot = bot
        self.stop = stop
        self.mailbox = Mailbox()
        self.turn = bot.turn(
            f"imap {settings.host.lower()}:{settings.port} {settings.username} {settings.folder}"
        )
        self.read_a_pass = False
        """Whether the current connection has read the whole folder once."""

    # -- connection ---------------------------------------------------------------

    def connect(self) -> IMAPClient:
        return connect(self.settings)

    def check(self) -> list[str]:
        """What ``mailbot imap check`` reports: connection, capabilities, folders."""
        return mailbox_report(self.settings)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Read until ``stop`` is set; every failure leads to a reconnect, never an exit."""
        try:
            self._take_turns()
        finally:
            self.turn.release()

    def _take_turns(self) -> None:
        """Read while the mailbox is this reader's, stand by while it is another's.

        Each failure waits out a backoff before the next attempt, doubling up to
        MAX_BACKOFF_SECONDS, and only a session that got through a whole pass
        of the folder starts it again from 1 s: a server that lets the reader
        log in and then refuses the folder (a wrong ``[imap] folder``) costs a
        line a minute, not a connection a millisecond.
        """
        backoff, standing_by = 1.0, False
        while not self.stop.is_set():
            try:
                mine = self.turn.take()
            except StorageUnavailable as exc:  # nothing could be stored now anyway
                failure = f"IMAP reading waits for the database ({exc})"
            else:
                if not mine:
                    if not standing_by:
                        log.info("IMAP: %s is read by another instance; standing by", self._folder)
                    standing_by = True
                    self.stop.wait(TURN_WAIT_SECONDS)
                    continue
                if standing_by:
                    log.info("IMAP: reading %s, the other instance has stopped", self._folder)
                    standing_by = False
                self.read_a_pass = False
                ended = self._connection()
                if ended is None:
                    continue  # stopped, or no longer this reader's turn
                failure = ended
                if self.read_a_pass:
                    backoff = 1.0
            log.warning("%s; retrying in %.0fs", failure, backoff)
            self.stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    @property
    def _folder(self) -> str:
        return f"{self.settings.username}'s {self.settings.folder}"

    def _connection(self) -> str | None:
        """One connection, read until stopped; what ended it otherwise."""
        try:
            client = self.connect()
        except CONNECTION_ERRORS as exc:
            return f"IMAP connection failed ({exc})"
        try:
            self._session(client)
        except CONNECTION_ERRORS as exc:
            return f"IMAP session ended ({exc})"
        except StorageUnavailable as exc:  # asking whether it is still this reader's turn
            return f"IMAP reading waits for the database ({exc})"
        except Exception as exc:  # a reply the client could not make sense of
            # The reader is the only way into the agency mailbox: a thread that
            # died here would leave its mail unread until a restart.
            log.error("IMAP reader failed", exc_info=True)
            return f"IMAP reader failed ({logs.first_line(exc)})"
        finally:
            _close(client)
        return None

    def _session(self, client: IMAPClient) -> None:
        self._select(client)
        use_idle = self.settings.idle and client.has_capability("IDLE")
        while not self.stop.is_set() and self.turn.take():
            self.catch_up(client)
            self.read_a_pass = True
            if use_idle:
                self._idle(client)
            else:
                self.stop.wait(self.settings.poll_seconds)
                client.noop()

    def _select(self, client: IMAPClient) -> None:
        selected = client.select_folder(self.settings.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        if uidvalidity != self.mailbox.uidvalidity:
            if self.mailbox.uidvalidity is not None:
                log.warning("UIDVALIDITY of %s changed: reading it all again", self.settings.folder)
            self.mailbox = Mailbox(uidvalidity=uidvalidity)

    def _idle(self, client: IMAPClient) -> None:
        """Wait for news, IDLE_SECONDS at most, in slices so that a stop request
        is seen within a second."""
        client.idle()
        try:
            waited = 0.0
            while not self.stop.is_set() and waited < IDLE_SECONDS:
                if client.idle_check(timeout=IDLE_SLICE_SECONDS):
                    break
                waited += IDLE_SLICE_SECONDS
        finally:
            client.idle_done()

    # -- messages -----------------------------------------------------------------

    def catch_up(self, client: IMAPClient) -> int:
        """Handle every message in the folder; returns how many left it."""
        uids = [u for u in client.search(["NOT", "DELETED"]) if u not in self.mailbox.failed_uids]
        handled = 0
        for start in range(0, len(uids), FETCH_BATCH):
            if self.stop.is_set():
                break
            batch = uids[start : start + FETCH_BATCH]
            fetched = client.fetch(batch, ["BODY.PEEK[]"])
            for uid in batch:
                raw = fetched.get(uid, {}).get(b"BODY[]")
                if isinstance(raw, bytes):
                    handled += self._handle(client, uid, raw)
        return handled

    def _handle(self, client: IMAPClient, uid: int, raw: bytes) -> int:
        try:
            outcome = self.bot.receive(raw, source="imap")
        except StorageUnavailable as exc:
            log.warning("IMAP message %d left in place, database unavailable: %s", uid, exc)
            return 0
        except ProcessingFailed as exc:
            log.error("IMAP message %d could not be processed: %s", uid, exc)
            return self._move(client, uid, self.settings.failed_folder)
        except Exception as exc:  # the database refused to store it, and not for an outage
            # Set aside like a message that failed: left in the folder, it would
            # stop every pass at itself, and the messages behind it with it.
            log.error("IMAP message %d could not be stored: %s", uid, logs.first_line(exc))
            return self._move(client, uid, self.settings.failed_folder)
        log.info("IMAP message %d: %s", uid, outcome)
        return self._move(client, uid, self.settings.done_folder)

    def _move(self, client: IMAPClient, uid: int, folder: str) -> int:
        try:
            if client.has_capability("MOVE"):
                client.move([uid], folder)
            else:
                client.copy([uid], folder)
                client.add_flags([uid], [b"\\Deleted"], silent=True)
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge([uid])
                else:
                    client.expunge()
        except IMAPClientError as exc:
            log.error("IMAP message %d could not be moved to %s: %s", uid, folder, exc)
            self.mailbox.failed_uids |= {uid}
            return 0
        return 1


def connect(settings: ImapSettings, timeout: float | None = None) -> IMAPClient:
    """Log in to the agency mailbox, creating the done and failed folders if missing.

    ``timeout`` bounds the connection and every reply (default: 15 s to connect,
    60 s per reply, for the long-running reader).
    """
    client = IMAPClient(
        settings.host,
        port=settings.port,
        ssl=settings.ssl,
        ssl_context=ssl.create_default_context(),
        timeout=SocketTimeout(connect=timeout or 15, read=timeout or 60),
    )
    try:
        if settings.starttls and not settings.ssl:
            client.starttls(ssl.create_default_context())
        client.login(settings.username or "", settings.password or "")
        for folder in (settings.done_folder, settings.failed_folder):
            if not client.folder_exists(folder):
                _create(client, folder)
    except BaseException:
        _close(client)
        raise
    return client


def _create(client: IMAPClient, folder: str) -> None:
    """Create ``folder``, unless another reader of the mailbox (another instance
    starting at the same moment) has just done so."""
    try:
        client.create_folder(folder)
    except IMAPClientError as exc:
        if "[ALREADYEXISTS]" not in str(exc).upper() and not client.folder_exists(folder):
            raise


def mailbox_report(settings: ImapSettings, timeout: float | None = None) -> list[str]:
    """Connect as the reader does and read the folder without changing it: the
    connection, the folders and the server's capabilities, one line each. Raises
    the connection's errors (``CONNECTION_ERRORS``)."""
    client = connect(settings, timeout)
    try:
        selected = client.select_folder(settings.folder, readonly=True)
        capabilities = {c.decode() for c in client.capabilities()}
        return [
            f"connected to {settings.host}:{settings.port} as {settings.username}",
            f"{settings.folder}: {selected[b'EXISTS']} message(s)",
            f"done folder {settings.done_folder} and failed folder {settings.failed_folder} exist",
            "IDLE: "
            + ("yes" if "IDLE" in capabilities else "no, polling")
            + "; MOVE: "
            + ("yes" if "MOVE" in capabilities else "no, copy and expunge"),
        ]
    finally:
        _close(client)


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except (*CONNECTION_ERRORS, AttributeError):
        try:
            client.shutdown()
        except (*CONNECTION_ERRORS, AttributeError):
            log.debug("IMAP socket already closed")
