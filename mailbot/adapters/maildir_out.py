"""Outgoing mail into a standard Maildir: one file per mail, written atomically.

The file is written and synced under ``tmp/``, then renamed into ``new/``, so
a reader never sees half a mail and a crash leaves at worst a stray file in
``tmp/``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path


class MaildirTransport:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def send(self, envelope_from: str, recipient: str, payload: bytes) -> None:
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.{socket.gethostname().replace('/', '_')}"
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
