"""Messages built from corpus formats: replies to mailbot's token mail in every
corpus quote format and in the main clients' HTML, agencies' forwards of a
decision, synthetic out-of-office replies.

The quote format of a corpus reply is found from its expected file and a
deliberately simple detector written here, not from mailparse's own rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from mailbot import tokens

from .corpus import BOT, CONTACT, ENCODINGS, Entry, body_of, wrap
from .tokenmail import TokenMail, some_token

SUBJECT_EN = "Re: [CR-7K2QX9MD] Validation requested: contact change for example.com"
SUBJECT_FR = "RE: [CR-7K2QX9MD] Validation demandée : changement de contacts pour example.com"
FORWARD_LINE = (
    "Aenean quis diam urna. Maecenas eleifend vulputate ligula ac consequat. "
    "Pellentesque cursus tincidunt mauris non venenatis."
)


@dataclass(frozen=True)
class Variant:
    """A generated message, the decision it carries, and the corpus row it was built from."""

    label: str
    raw: bytes
    verb: str
    token: str | None
    entry: Entry | None = None


COMMANDS = {
    "en": [
        ("ACCEPT {token}", "ACCEPT", True),
        ("REFUSE", "REFUSE", False),
        ("ACCEPT", "ACCEPT", False),
    ],
    "fr": [
        ("ACCEPTER {token}", "ACCEPT", True),
        ("REFUSER", "REFUSE", False),
        ("VALIDER", "ACCEPT", False),
    ],
}  # fmt: skip


_SIMPLE_QUOTE_HEADER = re.compile(
    r"wrote|a écrit|schrieb|escreveu|ha scritto|kirjoitti|napisał|skrev|>:|@[\w.]+>?\)?:\s*$"
    r"|^\s*\**(from|de|von|van|da|fra|od)\s*\**\s*:|-{3,}\s*\w+.*(message|nachricht|meddelelse|besked)"
    r"|^_{10,}",
    re.IGNORECASE,
)


def reply_text(entry: Entry) -> str:
    """A reply row's text as written (the text/plain body of a whole message)."""
    return entry.body if entry.body is not None else body_of(entry.raw)[0]


def quote_format(entry: Entry) -> tuple[list[str], list[str], str] | None:
    """(own lines, quote-introducing lines, quoted-line prefix) of a corpus reply."""
    lines = reply_text(entry).replace("\r\n", "\n").split("\n")
    start = _quote_start(lines, entry.expected)
    if start is None:
        return None
    quoted_at = next((i for i in range(start, len(lines)) if _quoted(lines[i])), None)
    if quoted_at is None:
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        body = next((line for line in lines[end:] if line.strip()), "")
        prefix = body[: len(body) - len(body.lstrip())] if body.startswith("    ") else ""
        return lines[:start], lines[start:end], prefix
    return lines[:start], lines[start:quoted_at], "> "


def _quoted(line: str) -> bool:
    """A ``>`` line, except the ``>:`` that ends an attribution wrapped after an address."""
    return line.lstrip().startswith(">") and not re.match(r"^\s*>\s*:\s*$", line)


def _quote_start(lines: list[str], expected: dict[str, Any]) -> int | None:
    """Where the reply's quote begins: after the expected new text, else a simple guess."""
    wanted = expected.get("reply_text")
    begin = 0
    if isinstance(wanted, str) and wanted.strip():
        last = wanted.strip().splitlines()[-1].strip()
        found = [i for i, line in enumerate(lines) if line.strip() == last]
        if found:
            begin = found[0] + 1
    for index in range(begin, len(lines)):
        line = lines[index]
        if _quoted(line) or _SIMPLE_QUOTE_HEADER.search(line):
            return _back_over_header(lines, index, begin)
    return None


def _back_over_header(lines: list[str], index: int, floor: int) -> int:
    """Attributions wrap: start at the first line of the paragraph holding the match."""
    if _quoted(lines[index]):
        return index
    while index > floor and lines[index - 1].strip() and not _quoted(lines[index - 1]):
        index -= 1
    return index


DEFAULT_FORMAT: tuple[list[str], list[str], str] = (
    [],
    ["On Mon, Mar 2, 2026 at 10:00 AM mailbot <changes@mailbot.example> wrote:"],
    "> ",
)
"""The usual quote, for a reply with no quote of its own."""


def reusable_reply(entry: Entry) -> bool:
    """A reply row whose text quote format can be reused (HTML ones are measured apart)."""
    return entry.category == "reply" and not entry.path.endswith(".html")


def decision_variants(entries: list[Entry], mails: dict[str, TokenMail]) -> Iterator[Variant]:
    """Every corpus reply format answering mailbot's token mail with each command."""
    for entry in entries:
        if reusable_reply(entry):
            yield from _entry_variants(entry, mails)


def _entry_variants(entry: Entry, mails: dict[str, TokenMail]) -> Iterator[Variant]:
    found = quote_format(entry)
    own, header, prefix = found if found is not None else DEFAULT_FORMAT
    decides = isinstance(entry.expected.get("decision"), str) or bool(
        entry.expected.get("tokens_in_new_text")
    )
    for language, shared in mails.items():
        mail = shared.with_token(some_token())
        quoted = [
            (prefix + line).rstrip() if line.strip() else prefix.rstrip()
            for line in mail.text.splitlines()
        ]
        subject = SUBJECT_FR if language == "fr" else SUBJECT_EN
        for template, verb, with_token in COMMANDS[language]:
            command = template.format(token=tokens.group(mail.token))
            for number, (extra, gap) in enumerate(SHAPES):
                if extra != "alone" and decides:
                    continue  # its own words would answer too: only the command alone
                own_lines = own[:6] if extra == "+own text" else []
                body = "\n".join([command, *gap, *own_lines, *gap, *header, "", *quoted])
                encoding = ENCODINGS[number % len(ENCODINGS)]
                label = f"{entry.label} [{language}] {command.split()[0]} {extra} {encoding[0]}"
                raw = wrap(body, subject, encoding=encoding)
                if number == len(SHAPES) - 1:
                    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                yield Variant(label, raw, verb, mail.token if with_token else None, entry)


SHAPES = [("alone", [""]), ("+own text", [""]), ("alone", []), ("+own text", [])]
"""The command alone or before the reply's own text; a blank line before the quote or not."""


def html_variants(mails: dict[str, TokenMail]) -> Iterator[Variant]:
    """HTML-only replies as Gmail, Outlook, Apple Mail and Thunderbird write them."""
    for language, shared in mails.items():
        mail = shared.with_token(some_token())
        original = mail.html.split("<body", 1)[-1].split(">", 1)[-1].rsplit("</body>", 1)[0]
        for name, build in HTML_CLIENTS.items():
            for template, verb, with_token in COMMANDS[language]:
                command = template.format(token=tokens.group(mail.token))
                html = build(command, original)
                subject = SUBJECT_FR if language == "fr" else SUBJECT_EN
                label = f"html:{name} [{language}] {command.split()[0]}"
                raw = wrap(html, subject, html=True)
                yield Variant(label, raw, verb, mail.token if with_token else None)


def _gmail(command: str, original: str) -> str:
    return (
        f'<div dir="ltr">{command}<div><br></div><div>Merci,</div><div>Alice</div></div><br>'
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Mar 2, 2026 at '
        "10:00 AM mailbot &lt;changes@mailbot.example&gt; wrote:<br></div>"
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">'
        f"{original}</blockquote></div>"
    )


def _outlook(command: str, original: str) -> str:
    return (
        '<html><head><style>p {margin:0}</style></head><body dir="ltr">'
        f'<div style="font-family: Calibri">{command}</div><div><br></div>'
        '<div id="appendonsend"></div><hr style="display:inline-block;width:98%" tabindex="-1">'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri" style="font-size:11pt">'
        "<b>From:</b> mailbot &lt;changes@mailbot.example&gt;<br><b>Sent:</b> Monday, "
        "March 2, 2026 10:00 AM<br><b>To:</b> Alice Martin &lt;alice@customer.example&gt;<br>"
        "<b>Subject:</b> [CR-7K2QX9MD] Validation requested</font><div>&nbsp;</div></div>"
        f"<div>{original}</div></body></html>"
    )


def _apple(command: str, original: str) -> str:
    return (
        '<html><body dir="auto"><div dir="ltr">'
        f'{command}</div><div dir="ltr"><br><div id="AppleMailSignature">Envoyé de mon iPhone'
        '</div><div dir="ltr"><br><blockquote type="cite">Le 2 mars 2026 à 10:00, mailbot '
        "&lt;changes@mailbot.example&gt; a écrit&nbsp;:<br><br></blockquote></div>"
        f'<blockquote type="cite"><div dir="ltr">{original}</div></blockquote></div></body></html>'
    )


def _thunderbird(command: str, original: str) -> str:
    return (
        f"<html><body><p>{command}</p><p>Cordialement,<br>Alice</p>"
        '<div class="moz-cite-prefix">Le 02/03/2026 à 10:00, mailbot a écrit&nbsp;:<br></div>'
        f'<blockquote type="cite" cite="mid:x@mailbot.example">{original}</blockquote>'
        '<div class="moz-signature">-- <br>Alice Martin</div></body></html>'
    )


HTML_CLIENTS: dict[str, Callable[[str, str], str]] = {
    "gmail": _gmail,
    "outlook": _outlook,
    "apple-mail": _apple,
    "thunderbird": _thunderbird,
}


def agency_variants(entries: list[Entry], mail: TokenMail) -> Iterator[Variant]:
    """A customer's ``ACCEPT <token>`` forwarded by an agency, in every corpus format."""
    command = f"ACCEPT {tokens.group(mail.token)}"
    for entry in entries:
        body = _with_command(entry, command) if entry.expected.get("is_forwarded") else None
        if body is None:
            continue
        subject = str(entry.expected.get("input_subject", "Fwd: Integer consequat non purus"))
        raw = wrap(body, subject, sender="agency@agency.example")
        yield Variant(f"inline:{entry.label}", raw, "ACCEPT", mail.token, entry)
    for name, template in HTML_FORWARDS.items():
        html = template.replace("{command}", command)
        raw = wrap(html, "Fwd: Validation", html=True, sender="agency@agency.example")
        yield Variant(f"html:{name}", raw, "ACCEPT", mail.token)
    yield from _attached_forwards(mail, command)


def _attached_forwards(mail: TokenMail, command: str) -> Iterator[Variant]:
    """The customer's reply attached as ``message/rfc822``, with and without a note."""
    reply = EmailMessage()
    reply["From"] = CONTACT
    reply["To"] = BOT
    reply["Subject"] = "Re: " + mail.subject
    quoted = "\n".join("> " + line for line in mail.text.splitlines())
    reply.set_content(f"{command}\n\nOn Mon, Mar 2, 2026, mailbot <{BOT}> wrote:\n{quoted}\n")
    for note in ("", "Hello, please find our customer's answer attached.\n"):
        outer = EmailMessage()
        outer["From"] = "Agency <agency@agency.example>"
        outer["To"] = BOT
        outer["Subject"] = "Fwd: " + str(reply["Subject"])
        outer.set_content(note or "\n")
        outer.add_attachment(reply)
        label = f"attached:{'with note' if note else 'bare'}"
        yield Variant(label, outer.as_bytes(), "ACCEPT", mail.token)


def _with_command(entry: Entry, command: str) -> str | None:
    """The forward's text with the forwarded message's first line replaced by ``command``.

    That line is the corpus's placeholder sentence, else the first line of the
    expected ``forwarded_body`` found below the original sender's address.
    """
    if entry.body is not None and FORWARD_LINE in entry.body:
        return entry.body.replace(FORWARD_LINE, command, 1)
    body, sender = entry.expected.get("forwarded_body"), entry.expected.get("forwarded_from")
    address = sender.get("address") if isinstance(sender, dict) else None
    if entry.path.endswith(".html") or not isinstance(body, str) or not isinstance(address, str):
        return None
    first = next((line.strip() for line in body.splitlines() if line.strip()), "")
    lines = reply_text(entry).split("\n")
    below = next((i for i, line in enumerate(lines) if address.lower() in line.lower()), None)
    if not first or below is None:
        return None
    for index in range(below + 1, len(lines)):
        if first in lines[index]:
            lines[index] = lines[index].replace(first, command, 1)
            return "\n".join(lines)
    return None


HTML_FORWARDS = {
    "gmail": '<div dir="ltr">Pour info<br><br><div class="gmail_quote"><div dir="ltr" '
    'class="gmail_attr">---------- Forwarded message ---------<br>From: <strong '
    'class="gmail_sendername" dir="auto">Bob Client</strong> <span dir="auto">&lt;'
    "bob@client.example&gt;</span><br>Date: Mon, Mar 2, 2026 at 11:00 AM<br>Subject: Validation"
    '<br>To: &lt;changes@mailbot.example&gt;<br></div><br><br><div dir="ltr">{command}</div>'
    "</div></div>",
    "outlook": '<html><body><div>Pour info</div><div id="appendonsend"></div><hr tabindex="-1">'
    '<div id="divRplyFwdMsg" dir="ltr"><font><b>De :</b> Bob Client &lt;bob@client.example&gt;'
    "<br><b>Envoyé :</b> lundi 2 mars 2026 11:00<br><b>À :</b> changes@mailbot.example<br>"
    "<b>Objet :</b> Validation</font><div>&nbsp;</div></div><div>{command}</div></body></html>",
    "apple-mail": '<html><body dir="auto"><div>Pour info</div><div><br><blockquote type="cite">'
    'Début du message réexpédié&nbsp;:<br><br></blockquote><blockquote type="cite"><div><b>De:'
    "</b> Bob Client &lt;bob@client.example&gt;<br><b>Date:</b> 2 mars 2026 à 11:00:00 UTC+1"
    "<br><b>À:</b> changes@mailbot.example<br><b>Objet:</b> <b>Validation</b><br></div>"
    '</blockquote><blockquote type="cite"><div dir="ltr">{command}</div></blockquote></div>'
    "</body></html>",
    "thunderbird": '<html><body><p>Pour info</p><div class="moz-forward-container"><br><br>'
    '-------- Message transféré --------<table class="moz-email-headers-table"><tbody><tr><th>'
    "Sujet&nbsp;:</th><td>Validation</td></tr><tr><th>Date&nbsp;:</th><td>Mon, 2 Mar 2026 "
    "11:00:00 +0100</td></tr><tr><th>De&nbsp;:</th><td>Bob Client &lt;bob@client.example&gt;"
    "</td></tr></tbody></table><br>{command}</div></body></html>",
}
"""Agencies' HTML-only forwards, as the main clients write them."""


def synthetic_autoreplies() -> Iterator[tuple[str, bytes]]:
    """French and English out-of-office replies as Exchange, Gmail and others send them."""
    cases = [
        (
            "Réponse automatique : " + SUBJECT_FR[4:],
            {"Auto-Submitted": "auto-replied"},
            "Je suis absente jusqu'au 10 mars.",
        ),
        (
            "Réponse automatique : " + SUBJECT_FR[4:],
            {"X-Auto-Response-Suppress": "All"},
            "Je suis absent du bureau.",
        ),
        ("Absence du bureau", {}, "Bonjour, je suis en congés jusqu'au 15 mars."),
        ("Absent : " + SUBJECT_FR[4:], {}, "Je suis absent, je reviens lundi."),
        (
            "Automatic reply: " + SUBJECT_EN[4:],
            {"X-Auto-Response-Suppress": "All"},
            "I am out of the office.",
        ),
        ("Out of Office: " + SUBJECT_EN[4:], {}, "I am away until Monday."),
        ("Auto: " + SUBJECT_EN[4:], {}, "I am on vacation."),
        ("Vacances", {"X-Autoreply": "yes", "Precedence": "bulk"}, "Je suis en vacances."),
        (
            "Re: " + SUBJECT_EN[4:],
            {"Auto-Submitted": "auto-replied"},
            "Thanks, we received your message.",
        ),
    ]
    for subject, headers, body in cases:
        message = EmailMessage()
        message["From"] = CONTACT
        message["To"] = BOT
        message["Subject"] = subject
        for name, value in headers.items():
            message[name] = value
        message.set_content(body + "\n")
        yield f"synthetic: {subject[:40]}", message.as_bytes()
