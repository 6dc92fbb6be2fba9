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

import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from mailbot.mailparse import mime
from mailbot.mailparse import robots as auto
from mailbot.mailparse.htmltext import html_to_text

LIBRARY_DETECTORS = True
"""Ask ``flufl.bounce`` for recipients of non-standard bounces (switchable to measure it)."""
MAX_DIAGNOSTIC_CHARS = 20_000
LIBRARY_MAX_BYTES = 256 * 1024
MAX_RECIPIENTS = 50

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_FAILURE_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
_MSGID = re.compile(r"<([^<>\s]{1,900})>")
_WHOLE_ADDRESS = rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-])({_ADDRESS.pattern})(?![\w-]|\.[\w-])"
_LEADING_ADDRESS = re.compile(rf"^\s*<?{_WHOLE_ADDRESS}>?(?:\s|:|$)", re.IGNORECASE)
_LISTED_ADDRESS = re.compile(rf"(?<!from )(?<!from <){_WHOLE_ADDRESS}", re.IGNORECASE)
_PREFIXED = re.compile(r"^(?:smtp|rfc822|x400)[=:;]", re.IGNORECASE)
_DAEMON_LOCAL = re.compile(
    r"mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|mail[-_.]?delivery"
    r"|mail[-_.]?service|mail[-_.]?administrator|smtp|mail[-_.]?system|^bounces?$|^mailer$",
    re.IGNORECASE,
)
_DAEMON_NAME = re.compile(
    r"mail delivery (?:system|subsystem|service)|mailer[- ]daemon|postmaster"
    r"|mail administrator|system administrator|mail system|delivery status",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status|failure|failed|has failed|problem"
    r"|notification|report|delayed|error)|mail delivery|failure notice|failed mail|returned mail"
    r"|returned to sender|could not be delivered|couldn't be delivered|not (?:be )?delivered"
    r"|mail system error|unzustellbar|nicht zustellbar|non remis|non distribuable"
    r"|[ée]chec de (?:la )?(?:remise|distribution)|remise diff[ée]r[ée]e|no se pudo entregar"
    r"|non recapitato|onbestelbaar|warning: message|delayed mail|user unknown"
    r"|mailbox (?:unavailable|full)|delivery notification",
    re.IGNORECASE,
)
_FAILURE_TEXT = re.compile(
    r"could not be delivered|couldn'?t be delivered|was not delivered|not been delivered"
    r"|undeliverable|delivery (?:to the following recipients? )?(?:has )?failed"
    r"|failed permanently|permanent (?:fatal )?errors?|address(?:\(es\)|es)? failed"
    r"|did not reach the following recipient|user unknown|unknown user|no such user"
    r"|mailbox (?:unavailable|is full|full)|quota exceeded|recipient address rejected"
    r"|host unknown|unrouteable|wasn'?t able to deliver|this is the (?:postfix program|mail system)"
    r"|delivery status notification|will be retried|will (?:continue to )?retry"
    r"|not accepting mail|unable to deliver|delivery attempts|failed recipients"
    r"|cannot be delivered|can't be delivered"
    r"|returned mail|delivery problem|message delayed|delayed \d+ hours"
    r"|\b5\d\d[ -]#?5\.\d+\.\d+",
    re.IGNORECASE,
)
_DELAY_TEXT = re.compile(
    r"\bdelay(?:ed)?\b|not yet been delivered|will (?:continue to )?(?:be )?retr|still trying"
    r"|remise diff[ée]r[ée]e|verz[öo]gert|retrasad",
    re.IGNORECASE,
)
_PERMANENT_TEXT = re.compile(
    r"failed permanently|permanent (?:fatal )?error|could not be delivered|has failed"
    r"|address(?:\(es\)|es)? failed|giving up|gave up|\b5\.\d+\.\d+",
    re.IGNORECASE,
)
_ORIGINAL_MARKER = re.compile(
    r"^\s*[-=*_ ]*(?:this is a copy of the message|original message|returned mail"
    r"|original message (?:as received|follows)|undelivered message|below this line"
    r"|your message (?:follows|reads)|message headers follow|text of the message"
    r"|unsent message below|headers of the original message|returned message)",
    re.IGNORECASE,
)
_RECIPIENT_INTRO = re.compile(
    r"following (?:recipients?|address(?:\(es\)|es)?)|recipient\(s\)|failed recipients"
    r"|could not be delivered to|delivery to the following",
    re.IGNORECASE,
)
_PHRASE_STATUS = (
    (re.compile(r"unrouteable (?:mail )?domain|host unknown|domain not found", re.I), "5.1.2"),
    (re.compile(r"user unknown|unknown user|no such user|does not exist|not recognized", re.I),
     "5.1.1"),
    (re.compile(r"could not initiate smtp conversation|connection (?:timed out|refused)", re.I),
     "5.3.2"),
    (re.compile(r"mailbox (?:is )?full|quota exceeded|over quota", re.I), "5.2.2"),
    (re.compile(r"relay(?:ing)? denied|access denied|blocked|spam", re.I), "5.7.1"),
)  # fmt: skip
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[str, ...]
    """Addresses that failed (or, for a delay warning, that are delayed), lower-cased."""
    permanent: bool
    """The mail will not be delivered: ``Action: failed``, a 5.x.x status, or a failure text."""
    delayed: bool = False
    """Only a delay warning: the reporting server is still trying."""
    status: tuple[str, ...] = ()
    """Enhanced status codes found (``5.1.1``...), in order."""
    diagnostic: str = ""
    """The server's reason, shortened (Diagnostic-Code or the report's text)."""
    standard: bool = False
    """An RFC 3464 report (as opposed to a free-text bounce)."""
    original_message_id: str | None = None
    """Message-ID of the mail that bounced (from the returned message or its headers)."""
    original_envelope_from: str | None = None
    """The envelope sender the bounce went back to (a VERP address, for mailbot's mail)."""
    original_sender: str | None = None
    """From address of the returned message."""
    original_subject: str = ""
    original_envelope_id: str | None = None
    """RFC 3461 ENVID echoed by the report (``Original-Envelope-Id``)."""
    reporting_mta: str = ""


@dataclass(frozen=True)
class _Report:
    failed: list[str]
    delayed: list[str]
    status: list[str]
    diagnostic: str
    per_message: dict[str, str]


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
    diagnostic = _diagnostic_text(message)
    if auto.is_challenge_response(message, diagnostic):
        return None
    original, attached = _original(message)
    report, successful = _report(message)
    if report is not None:
        return _from_report(report, original)
    if successful:
        return None
    if not _looks_like_bounce(message, sender, sender_name, subject, diagnostic, attached):
        return None
    return _from_text(message, sender, subject, diagnostic, original, library_view or message)


# -- RFC 3464 ------------------------------------------------------------------


def _report(message: Message) -> tuple[_Report | None, bool]:
    """The failures a delivery-status part reports, and whether it only reports successes."""
    for part, _ in mime.walk(message):
        kind = mime.content_type(part)
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            blocks = _status_blocks(part)
            if len(blocks) < 2:
                continue
            report = _read_blocks(blocks)
            if report.failed or report.delayed:
                return report, False
            if _all_successful(blocks[1:]):
                return None, True
    return None, False


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The per-message block then one block per recipient, field names lower-cased."""
    blocks: list[dict[str, str]] = []
    for child in mime.children(part)[:MAX_RECIPIENTS]:
        blocks.append({key.lower(): mime.raw_header(child, key) for key in child.keys()[:50]})
    if len(blocks) >= 2:
        return blocks
    return _blocks_from_text(mime.decoded_text(part))


def _blocks_from_text(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text.replace("\r\n", "\n")[:MAX_DIAGNOSTIC_CHARS]):
        fields: dict[str, str] = {}
        last = ""
        for line in chunk.split("\n"):
            if line[:1] in (" ", "\t") and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                last = name.strip().lower()
                fields.setdefault(last, value.strip())
        if fields:
            blocks.append(fields)
        if len(blocks) > MAX_RECIPIENTS:
            break
    return blocks


def _read_blocks(blocks: list[dict[str, str]]) -> _Report:
    failed: list[str] = []
    delayed: list[str] = []
    statuses: list[str] = []
    diagnostic = ""
    for block in blocks[1:]:
        address = _typed_address(block.get("final-recipient") or block.get("original-recipient"))
        status = _first_status(block.get("status", ""))
        action = block.get("action", "").strip().lower()
        if status:
            statuses.append(status)
        diagnostic = diagnostic or block.get("diagnostic-code", "")
        if address is None or action in _SUCCESS_ACTIONS:
            continue
        if action == "delayed" or (not action and status.startswith("4")):
            delayed.append(address)
        elif action == "failed" or status.startswith("5") or not action:
            failed.append(address)
    return _Report(failed, delayed, statuses, diagnostic, blocks[0])


def _all_successful(blocks: list[dict[str, str]]) -> bool:
    actions = {block.get("action", "").strip().lower() for block in blocks}
    return bool(actions) and actions <= _SUCCESS_ACTIONS


def _typed_address(value: str | None) -> str | None:
    """``rfc822; someone@example.com`` -> ``someone@example.com``."""
    if not value:
        return None
    value = value.split(";", 1)[1] if ";" in value else value
    found = _ADDRESS.search(value)
    return found.group().lower() if found else None


def _first_status(value: str) -> str:
    found = _STATUS.search(value)
    return ".".join(found.groups()) if found else ""


def _from_report(report: _Report, original: Message | None) -> Bounce:
    failed = list(dict.fromkeys(report.failed))
    delayed = not failed
    recipients = failed or list(dict.fromkeys(report.delayed))
    per_message = report.per_message
    about = _original_fields(original, _typed_address(per_message.get("x-postfix-sender")))
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=not delayed,
        delayed=delayed,
        status=tuple(dict.fromkeys(report.status)),
        diagnostic=_short(report.diagnostic),
        standard=True,
        reporting_mta=_short(per_message.get("reporting-mta", "").split(";")[-1], 200),
        original_envelope_id=per_message.get("original-envelope-id", "").strip() or None,
        original_message_id=about.message_id,
        original_envelope_from=about.envelope_from,
        original_sender=about.sender,
        original_subject=about.subject,
    )


# -- free-text bounces ---------------------------------------------------------


def _looks_like_bounce(
    message: Message,
    sender: str | None,
    sender_name: str,
    subject: str,
    diagnostic: str,
    attached: bool,
) -> bool:
    """Sent by a mail server about a failed delivery, not a person talking about one.

    ``attached``: the message carries a returned message as a MIME part (a
    person's reply may quote an "Original Message" inline, never attach one).
    """
    if mime.SUBJECT_PREFIX.match(subject):
        return False
    if mime.raw_header(message, "X-Failed-Recipients").strip():
        return True
    local = (sender or "").partition("@")[0]
    daemon = sender is None or bool(_DAEMON_LOCAL.search(local) or _DAEMON_NAME.search(sender_name))
    null_path = mime.raw_header(message, "Return-Path").strip() == "<>"
    by_subject = _BOUNCE_SUBJECT.search(subject) is not None
    by_text = _FAILURE_TEXT.search(diagnostic[:5_000]) is not None
    if daemon:
        return by_subject or by_text or attached
    automated = bool(mime.raw_header(message, "Auto-Submitted").strip())
    return by_subject and (attached or null_path or (by_text and automated))


def _from_text(
    message: Message,
    sender: str | None,
    subject: str,
    diagnostic: str,
    original: Message | None,
    library_view: Message,
) -> Bounce:
    failed_header = [
        a.lower()
        for _, a in getaddresses([mime.raw_header(message, "X-Failed-Recipients")])
        if "@" in a
    ]
    temporary, permanent = _library_failures(library_view)
    excluded = _not_recipients(message, sender, original)
    recipients = [a for a in dict.fromkeys(failed_header + permanent + temporary) if a]
    if not recipients:
        recipients = _addresses_near_failures(diagnostic, excluded)
    delayed = _is_delay(subject, diagnostic, temporary, permanent)
    about = _original_fields(original, None)
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=not delayed,
        delayed=delayed,
        status=_text_statuses(diagnostic, delayed),
        diagnostic=_short(diagnostic),
        original_message_id=about.message_id,
        original_envelope_from=about.envelope_from,
        original_sender=about.sender,
        original_subject=about.subject,
    )


def _library_failures(message: Message) -> tuple[list[str], list[str]]:
    """Temporary and permanent failures according to flufl.bounce (if enabled)."""
    if not LIBRARY_DETECTORS or mime.has_unsafe_charset(message):
        return [], []
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a third-party detector on hostile input: no answer, not a crash
        return [], []
    return _decoded(temporary), _decoded(permanent)


def _decoded(addresses: frozenset[bytes] | frozenset[str]) -> list[str]:
    out: list[str] = []
    for address in addresses:
        text = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
        found = _ADDRESS.search(text)
        if found:
            out.append(found.group().lower())
    return sorted(out)


def _not_recipients(message: Message, sender: str | None, original: Message | None) -> set[str]:
    """Addresses in a bounce that are never the failed recipient: its own parties."""
    excluded = {sender or ""}
    for name in ("To", "Return-Path", "Delivered-To", "X-Original-To"):
        excluded.update(a.lower() for _, a in getaddresses([mime.raw_header(message, name)]))
    if original is not None:
        for name in ("From", "Sender", "Return-Path", "Reply-To"):
            excluded.update(a.lower() for _, a in getaddresses([mime.raw_header(original, name)]))
    return excluded


def _addresses_near_failures(diagnostic: str, excluded: set[str]) -> list[str]:
    """Addresses that open a line (``<a@b>: reason``, or alone), stand on a failure
    line, or are listed under "the following recipients"; never a "from" address."""
    found: list[str] = []
    listing = 0
    for line in diagnostic.splitlines()[:300]:
        if _RECIPIENT_INTRO.search(line):
            listing = 6
        leading = _LEADING_ADDRESS.match(line)
        if leading is not None:
            found.append(leading.group(1))
        elif listing > 0 or _FAILURE_TEXT.search(line) is not None:
            found.extend(m.group(1) for m in _LISTED_ADDRESS.finditer(line))
        listing = max(0, listing - 1)
    cleaned = (_PREFIXED.sub("", address).lower() for address in found)
    return list(
        dict.fromkeys(
            address
            for address in cleaned
            if address not in excluded and not _DAEMON_LOCAL.search(address.partition("@")[0])
        )
    )


def _is_delay(subject: str, diagnostic: str, temporary: list[str], permanent: list[str]) -> bool:
    if temporary and not permanent:
        return True
    if permanent:
        return False
    delay_words = _DELAY_TEXT.search(subject) or _DELAY_TEXT.search(diagnostic[:5_000])
    return bool(delay_words) and not _PERMANENT_TEXT.search(diagnostic[:5_000])


def _text_statuses(diagnostic: str, delayed: bool) -> tuple[str, ...]:
    text = diagnostic[:MAX_DIAGNOSTIC_CHARS]
    codes = [".".join(m.groups()) for m in _FAILURE_STATUS.finditer(text)]
    if codes:
        return tuple(dict.fromkeys(codes))
    for pattern, code in _PHRASE_STATUS:
        if pattern.search(diagnostic[:5_000]):
            return (("4" if delayed else "5") + code[1:],)
    return ()


# -- the returned message ------------------------------------------------------


def _diagnostic_text(message: Message) -> str:
    """The bounce's own words: its text parts before the returned message, bounded."""
    texts: list[str] = []
    for part, _ in mime.walk(message):
        kind = mime.content_type(part)
        if kind in ("text/plain", "text/html"):
            text = mime.decoded_text(part)[:MAX_DIAGNOSTIC_CHARS]
            if kind == "text/html":
                text = html_to_text(text)
            texts.append(_before_original(text))
        if sum(len(t) for t in texts) > MAX_DIAGNOSTIC_CHARS:
            break
    return "\n".join(texts)[:MAX_DIAGNOSTIC_CHARS]


def _before_original(text: str) -> str:
    lines = text.splitlines()
    for index, line in enumerate(lines[:2_000]):
        if _ORIGINAL_MARKER.match(line):
            return "\n".join(lines[:index])
    return text


def _original(message: Message) -> tuple[Message | None, bool]:
    """The returned message: an attached one (True), else one pasted below a marker line."""
    for part, depth in mime.walk(message):
        if depth > 0:
            inner = mime.attached_message(part)
            if inner is not None:
                return inner, True
    return _inline_original(message), False


def _inline_original(message: Message) -> Message | None:
    plain, _ = mime.body_parts(message)
    if not plain:
        return None
    lines = plain.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines[:2_000]):
        if _ORIGINAL_MARKER.match(line):
            rest = [re.sub(r"^>\s?", "", x) for x in lines[index + 1 : index + 400]]
            while rest and not rest[0].strip():
                rest.pop(0)
            return mime.parse_text_message("\n".join(rest))
    return None


@dataclass(frozen=True)
class _Original:
    message_id: str | None = None
    envelope_from: str | None = None
    sender: str | None = None
    subject: str = ""


def _original_fields(original: Message | None, envelope_from: str | None) -> _Original:
    if original is None:
        return _Original(envelope_from=envelope_from)
    found = _MSGID.search(mime.raw_header(original, "Message-ID"))
    return_path = parseaddr(mime.raw_header(original, "Return-Path"))[1].lower()
    sender = parseaddr(mime.raw_header(original, "From"))[1].lower()
    return _Original(
        message_id=found.group(1) if found else None,
        envelope_from=envelope_from or (return_path if "@" in return_path else None),
        sender=sender if "@" in sender else None,
        subject=_short(mime.header(original, "Subject"), 300),
    )


def _short(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]
