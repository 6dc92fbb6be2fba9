"""Outgoing mail into a standard Maildir: one file per mail, written atomically,
once per Message-ID.

The file is written and synced under ``tmp/``, then renamed into ``new/``, so
a reader never sees half a mail and a crash leaves at worst a stray file in
``tmp/``. Its name is derived from the mail's Message-ID and recipient, so a
mail sent again after a crash (the outbox is at-least-once) finds its file
already in ``new/`` or ``cur/`` and writes no second one.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class MaildirTransport:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    def send(self, envelope_from: str, recipient: str, payload: bytes) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        name = f"{_unique(recipient, payload)}.{self.host}"
        if self._delivered(name):
            return
        staged = self.root / "tmp" / name
        with staged.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        staged.rename(self.root / "new" / name)
        directory = os.open(self.root / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _delivered(self, name: str) -> bool:
        """Already in ``new/``, or moved to ``cur/`` by a reader (with its ``:2,`` flags)."""
        if (self.root / "new" / name).exists() or (self.root / "cur" / name).exists():
            return True
        return any((self.root / "cur").glob(f"{name}:*"))


def _unique(recipient: str, payload: bytes) -> str:
    """A Maildir unique name for this mail to this recipient: the same on a re-send."""
    head = payload.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    identity = found.group(1) if found else hashlib.sha256(payload).digest()
    return hashlib.sha256(identity + b"\0" + recipient.encode()).hexdigest()[:40]
