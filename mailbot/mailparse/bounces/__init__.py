"""Bounces: which addresses failed, for good or for now, and which of our mails it was.

Two kinds of bounce reach mailbot:

- RFC 3464 delivery status notifications (``multipart/report;
  report-type=delivery-status``): per recipient ``Final-Recipient``,
  ``Action`` (failed, delayed, delivered…) and ``Status`` (5.x.x permanent,
  4.x.x transient). Read here field by field.
- Everything older or sloppier (qmail, Exim, Exchange 5.5, Yahoo, GroupWise…):
  recognised by who sends it and how it reads, and its recipients found by
  Mailman's ``flufl.bounce`` detectors, then by a generic fallback that takes
  the addresses standing next to a failure phrase.

A delay warning ("Action: delayed", "Warning: message delayed") is reported
with ``delayed=True`` and ``permanent=False``: the mail may still arrive. A
challenge/response robot dressed up as a DSN (Boxbe) is not a bounce at all.

The returned message (``message/rfc822``, ``text/rfc822-headers`` or pasted
inline below a marker line) gives the original Message-ID and envelope
sender, which is what lets mailbot find which of its own mails bounced.
"""

from __future__ import annotations

from dataclasses import replace
from email.message import Message

from mailbot.mailparse import robots
from mailbot.mailparse.bounces import freetext, report, returned
from mailbot.mailparse.bounces.bounce import Bounce

__all__ = ["LIBRARY_DETECTORS", "LIBRARY_MAX_BYTES", "Bounce", "detect"]

LIBRARY_DETECTORS = True
"""Ask ``flufl.bounce`` for recipients of non-standard bounces (switchable to measure it)."""
LIBRARY_MAX_BYTES = 256 * 1024


def detect(
    message: Message,
    sender: str | None,
    subject: str,
    sender_name: str,
    library_view: Message | None = None,
) -> Bounce | None:
    """The bounce this message is, or None (never for a person's own message).

    ``library_view`` is the message as the third-party detectors may read it:
    a copy parsed from the first ``LIBRARY_MAX_BYTES`` when the message is big,
    because they scan every line of every part.
    """
    diagnostic = returned.diagnostic_text(message)
    if robots.is_challenge_response(message, diagnostic):
        return None
    original, attached = returned.original(message)
    found, successful = report.read(message)
    if found is not None:
        return _naming_the_original(report.from_report(found, original), message)
    if successful:
        return None
    if not freetext.looks_like_bounce(
        message, sender, sender_name, subject, diagnostic, original, attached
    ):
        return None
    library = library_view or message if LIBRARY_DETECTORS else None
    bounce = freetext.from_text(message, sender, subject, diagnostic, original, library)
    return _naming_the_original(bounce, message)


def _naming_the_original(bounce: Bounce, message: Message) -> Bounce:
    """A report that returns nothing of the original may still name it: Exchange and
    Gmail answer it (``In-Reply-To``), which is the Message-ID mailbot sent."""
    if bounce.original_message_id is not None:
        return bounce
    return replace(bounce, original_message_id=returned.answered_id(message))
