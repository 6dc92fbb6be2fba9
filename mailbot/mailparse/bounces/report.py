"""RFC 3464 delivery status notifications (``multipart/report;
report-type=delivery-status``), read field by field: per recipient
``Final-Recipient``, ``Action`` (failed, delayed, delivered…) and ``Status``
(5.x.x permanent, 4.x.x transient)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from mailbot.mailparse import mime
from mailbot.mailparse.bounces.bounce import (
    ADDRESS,
    MAX_DIAGNOSTIC_CHARS,
    MAX_RECIPIENTS,
    Bounce,
    short,
)
from mailbot.mailparse.bounces.returned import original_fields

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})


@dataclass(frozen=True)
class Report:
    """What a delivery-status part says: recipients by action, and its fields."""

    failed: list[str]
    delayed: list[str]
    status: list[str]
    diagnostic: str
    per_message: dict[str, str]


def read(message: Message) -> tuple[Report | None, bool]:
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


def _read_blocks(blocks: list[dict[str, str]]) -> Report:
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
    return Report(failed, delayed, statuses, diagnostic, blocks[0])


def _all_successful(blocks: list[dict[str, str]]) -> bool:
    actions = {block.get("action", "").strip().lower() for block in blocks}
    return bool(actions) and actions <= _SUCCESS_ACTIONS


def _typed_address(value: str | None) -> str | None:
    """``rfc822; someone@example.com`` -> ``someone@example.com``."""
    if not value:
        return None
    value = value.split(";", 1)[1] if ";" in value else value
    found = ADDRESS.search(value)
    return found.group().lower() if found else None


def _first_status(value: str) -> str:
    found = _STATUS.search(value)
    return ".".join(found.groups()) if found else ""


def from_report(report: Report, original: Message | None) -> Bounce:
    failed = list(dict.fromkeys(report.failed))
    delayed = not failed
    recipients = failed or list(dict.fromkeys(report.delayed))
    per_message = report.per_message
    about = original_fields(original, _typed_address(per_message.get("x-postfix-sender")))
    return Bounce(
        recipients=tuple(recipients[:MAX_RECIPIENTS]),
        permanent=not delayed,
        delayed=delayed,
        status=tuple(dict.fromkeys(report.status)),
        diagnostic=short(report.diagnostic),
        standard=True,
        reporting_mta=short(per_message.get("reporting-mta", "").split(";")[-1], 200),
        original_envelope_id=per_message.get("original-envelope-id", "").strip() or None,
        original_message_id=about.message_id,
        original_envelope_from=about.envelope_from,
        original_sender=about.sender,
        original_subject=about.subject,
    )
