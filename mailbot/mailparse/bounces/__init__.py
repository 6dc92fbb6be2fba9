"""Bounces: which addresses failed, for good or for now, and which of our mails it was.

Two kinds of bounce reach mailbot:

- RFC 3464 delivery status notifications (``multipart/report;
  report-type=delivery-status``): per recipient ``Final-Recipient``,
  ``Action`` (failed, delayed, delivered…) and ``Status`` (5.x.x permanent,
  4.x.x transient). Read here field by field (``report``).
- Everything else (``freetext``): qmail and its variants, Exim and the
  providers that translate it (Orange, GMX, Web.de), Exchange and Office 365
  NDRs that lost their DSN part, Google's "Address not found", Domino, Apache
  James, Courier, Yahoo, GroupWise… Recognised by who sends them (a daemon's
  address or name, Exchange's NDR mark) and how they read (``phrases``: the
  wordings in English, French, German and Spanish), their recipients found by
  Mailman's ``flufl.bounce`` detectors, then by mailbot's own rules: addresses
  that open a line, follow a recipient label or an intro such as "Delivery has
  failed to these recipients or groups", and, when the report names nobody,
  the sole addressee of the returned message.

A delay warning ("Action: delayed", "has not yet been delivered", "Warning:
message delayed", "La remise est différée", "noch nicht zugestellt") is
reported with ``delayed=True`` and ``permanent=False``: the mail may still
arrive; a report that says it gave up is never a delay. Neither a
challenge/response robot dressed up as a DSN (Boxbe), nor an automatic reply,
nor a notice that the mail was delivered or relayed, is a bounce at all.

The returned message (``message/rfc822``, ``text/rfc822-headers`` or pasted
inline below a marker line, in the MTA's language) gives the original
Message-ID and envelope sender, which is what lets mailbot find which of its
own mails bounced; a report that returns nothing may still name the mail it
answers in ``In-Reply-To``.
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
