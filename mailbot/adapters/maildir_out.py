"""Outgoing mail into a standard Maildir: one file per mail, written atomically,
once per Message-ID.

The file is written and synced under ``tmp/``, then renamed into ``new/``, so
a reader never sees half a mail and a crash leaves at worst a stray file in
``tmp/``. The outbox's commit point falls between the two: a mail is marked
sent before its file appears, and a failed rename puts it back. A file's name
is the time, then a digest of the mail's Message-ID and recipient, then the
host: a mail sent again (a send that outlasted its lease) finds its digest
already in ``new/`` or ``cur/`` and writes no second file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import time
from pathlib import Path

from mailbot.outgoing.outbox import CommitPoint

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class MaildirTransport:
    """One instance per flush: the names already delivered are listed once, on the
    first mail, so that a Maildir of any size costs one listing per flush."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._present: set[str] | None = None

    def send(
        self,
        envelope_from: str,
        recipient: str,
        payload: bytes,
        commit_point: CommitPoint,
    ) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        unique = _unique(recipient, payload)
        present = self._delivered()
        if unique in present:
            return
        name = f"{time.time_ns()}.{unique}.{self.host}"  # sorts in the order written
        staged = self.root / "tmp" / name
        with staged.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            commit_point(functools.partial(os.rename, staged, self.root / "new" / name))
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        directory = os.open(self.root / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        present.add(unique)

    def _delivered(self) -> set[str]:
        """The unique parts of the names in ``new/`` and ``cur/`` (where a reader
        moves a mail, adding its ``:2,`` flags)."""
        if self._present is None:
            names = [*os.listdir(self.root / "new"), *os.listdir(self.root / "cur")]
            self._present = {name.split(".")[1] for name in names if name.count(".") >= 2}
        return self._present


def _unique(recipient: str, payload: bytes) -> str:
    """A Maildir unique name for this mail to this recipient: the same on a re-send."""
    head = payload.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    identity = found.group(1) if found else hashlib.sha256(payload).digest()
    return hashlib.sha256(identity + b"\0" + recipient.encode()).hexdigest()[:40]
