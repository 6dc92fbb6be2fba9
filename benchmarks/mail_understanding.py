"""How well mailbot understands real mail: decisions, forwards, robots, bounces, speed.

Usage: ``python benchmarks/mail_understanding.py CORPUS_DIR`` where CORPUS_DIR is
laid out like ``shared/corpus`` (``manifest.tsv`` with the columns path,
category, client_or_mta, language, expected_file; the messages; the
``*.expected.json`` files).

What is measured:

- **Decisions**: for every reply in the corpus, its quote format (the lines
  that introduce its quote, and how the quoted text is marked: ``> ``,
  indentation or nothing) is reused to build realistic answers to mailbot's
  own token mail (rendered from the shipped templates, in English and French,
  and containing both ACCEPT and REFUSE and the token): ``ACCEPT <token>``,
  ``REFUSE``, bare ``ACCEPT`` and their French forms above the quote. Plus
  synthetic HTML-only replies in the Gmail, Outlook, Apple Mail and
  Thunderbird formats. Each goes through ``mailparse.parse`` then
  ``commands.find_command(subject, new_text)``; the token must be the first of
  ``tokens_in_new_text`` (and none for a bare decision). The quote format is
  found from the expected files and a deliberately simple detector written
  here, not from mailparse's own rules.
- **Forwards**: corpus forwards recognised and attributed to the right
  original sender; and agency forwards (each corpus forward format, plus
  ``message/rfc822`` attachments) whose forwarded message says ``ACCEPT
  <token>``: decision and token found in ``forwarded.new_text``.
- **Auto-replies**: corpus auto-replies and synthetic French/English
  out-of-office replies must all be ``automatic`` and never read as bounces.
- **Bounces**: corpus bounces recognised, failed recipients exact where the
  expected file lists them (with and without flufl.bounce, to show what the
  library adds); every other message (and every generated variant) must not
  be taken for a bounce.
- **Speed**: parse time per message, median and p99.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailbot import commands, mailparse, tokens
from mailbot.errors import AmbiguousDecision, MailbotError
from mailbot.mailparse import bounces

SUBJECT_EN = "Re: [CR-7K2QX9MD] Validation requested: contact change for example.com"
SUBJECT_FR = "RE: [CR-7K2QX9MD] Validation demandée : changement de contacts pour example.com"
CONTACT = '"Alice Martin" <alice@customer.example>'
BOT = "changes@mailbot.example"
WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FORWARD_LINE = (
    "Aenean quis diam urna. Maecenas eleifend vulputate ligula ac consequat. "
    "Pellentesque cursus tincidunt mauris non venenatis."
)


# -- corpus --------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    path: str
    category: str
    client: str
    language: str
    expected: dict[str, Any]
    raw: bytes
    """The whole message (bodies-only files wrapped into one)."""
    body: str | None
    """For .txt/.html corpus files: the body as written."""


def load_corpus(root: Path) -> list[Entry]:
    entries: list[Entry] = []
    lines = (root / "manifest.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        path, category, client, language, expected_file = line.split("\t")[:5]
        expected: dict[str, Any] = {}
        if expected_file != "-":
            expected = json.loads((root / expected_file).read_text(encoding="utf-8"))
        data = (root / path).read_bytes()
        body = None
        if path.endswith((".txt", ".html")):
            body = data.decode("utf-8", errors="replace")
            subject = expected.get("input_subject", "Re: your message")
            data = wrap(body, subject, html=path.endswith(".html"))
        entries.append(Entry(path, category, client, language, expected, data, body))
    return entries


ENCODINGS = [("utf-8", None), ("utf-8", "base64"), ("iso-8859-1", "quoted-printable")]


def wrap(
    body: str,
    subject: str,
    *,
    html: bool = False,
    sender: str = CONTACT,
    encoding: tuple[str, str | None] = ENCODINGS[0],
) -> bytes:
    """A bodies-only corpus file as the message a mail client would have sent."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = BOT
    message["Subject"] = subject
    message["Message-ID"] = "<benchmark@customer.example>"
    charset, cte = encoding
    if charset != "utf-8" and body.encode(charset, errors="replace").decode(charset) != body:
        charset, cte = "utf-8", None  # text the legacy charset cannot hold
    message.set_content(body, subtype="html" if html else "plain", charset=charset, cte=cte)
    return message.as_bytes()


# -- mailbot's own token mail ------------------------------------------------------


@dataclass(frozen=True)
class TokenMail:
    language: str
    subject: str
    text: str
    html: str
    token: str

    def with_token(self, token: str) -> TokenMail:
        """The same mail for another contact's token (tokens of every shape get tried)."""

        def swap(text: str) -> str:
            return text.replace(tokens.group(self.token), tokens.group(token)).replace(
                self.token, token
            )

        return TokenMail(self.language, self.subject, swap(self.text), swap(self.html), token)


RANDOM = random.Random(20260302)  # noqa: S311 - reproducible test data, not secrets


def some_token() -> str:
    return tokens.encode(RANDOM.getrandbits(tokens.TOKEN_BITS), tokens.TOKEN_LENGTH)


def token_mail(language: str) -> TokenMail:
    """The validation mail as mailbot renders it (built-in copy if rendering fails)."""
    token = tokens.new_token()
    try:
        return _rendered(language, token)
    except Exception:  # other modules change under us: fall back, still measure
        return _builtin(language, token)


def _rendered(language: str, token: str) -> TokenMail:
    from mailbot.config import BotSettings
    from mailbot.domain import Party, Request, Role, RoleChange, Service, Side, Validation
    from mailbot.outgoing.render import Renderer, make_environment
    from mailbot.views import RequestView

    admin = Party("alice@customer.example", "Alice Martin", id=1)
    new = Party("carol@agency.example", "Carol", id=2)
    service = Service("example.com", {Role.ADMIN: admin, Role.TECH: admin, Role.BILLING: admin})
    request = Request(
        id="CR-7K2QX9MD",
        service=service,
        requester=admin,
        changes=(RoleChange(Role.TECH, admin, new),),
        validations=(Validation(admin, Side.CURRENT), Validation(new, Side.NEW)),
        created_at=WHEN,
        expires_at=WHEN + timedelta(days=14),
    )
    context = {
        "bot": BotSettings(address=BOT),
        "to": admin,
        "event": "validation-requested",
        "request": RequestView.of(request),
        "token": tokens.group(token),
        "link": f"https://mailbot.example/v/{token}",
        "reply_address": "changes+K3Y@mailbot.example",
        "side": "current",
        "error": None,
        "command": "",
        "original_subject": "",
        "decision": None,
    }
    mail = Renderer(make_environment()).mail("validation-requested", language, context)
    return TokenMail(language, mail.subject, mail.text, mail.html, token)


def _builtin(language: str, token: str) -> TokenMail:
    grouped = tokens.group(token)
    text = (
        f"Hello Alice,\n\nYour personal validation token:\n\n    {grouped}\n\n"
        "- reply to this email with ACCEPT or REFUSE as the first line of your reply\n"
        f"- or send a new email whose first line is\n  ACCEPT {grouped}\n"
        "  (or REFUSE followed by the token).\n\nIf you did not expect this request, "
        "reply REFUSE.\n"
    )
    html = "<p>" + text.replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"
    return TokenMail(language, "[CR-7K2QX9MD] Validation requested", text, html, token)


# -- decisions -----------------------------------------------------------------------


@dataclass
class Tally:
    total: int = 0
    correct: int = 0
    wrong_opposite: int = 0
    wrong_token: int = 0
    not_understood: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: str, label: str) -> None:
        self.total += 1
        if outcome == "correct":
            self.correct += 1
            return
        if outcome == "opposite":
            self.wrong_opposite += 1
        elif outcome == "token":
            self.wrong_token += 1
        else:
            self.not_understood += 1
        self.reasons[outcome] += 1
        self.failures.append(f"{outcome}: {label}")

    def errors(self) -> str:
        reasons = f" {dict(self.reasons)}" if self.reasons else ""
        return (
            f"wrong-opposite {self.wrong_opposite}, wrong token {self.wrong_token}, "
            f"not understood {self.not_understood}{reasons}"
        )


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


def judge(raw: bytes, verb: str, token: str | None, *, forwarded: bool = False) -> str:
    """correct | opposite | token | ambiguous | unknown | automatic | no-forward."""
    parsed = mailparse.parse(raw)
    if parsed.automatic or parsed.bounce is not None:
        return "automatic"
    subject, text, found = parsed.subject, parsed.new_text, parsed.tokens_in_new_text
    if forwarded:
        if parsed.forwarded is None:
            return "no-forward"
        subject, text = "", parsed.forwarded.new_text
        found = parsed.forwarded.tokens_in_new_text
    try:
        command = commands.find_command(subject, text)
    except AmbiguousDecision:
        return "ambiguous"
    except MailbotError:
        return "unknown"
    if command.verb != verb:
        return "opposite" if command.verb in ("ACCEPT", "REFUSE") else "unknown"
    if token is not None and found[:1] != (token,):
        return "token"
    if token is None and found:
        return "token"
    return "correct"


_SIMPLE_QUOTE_HEADER = re.compile(
    r"wrote|a écrit|schrieb|escreveu|ha scritto|kirjoitti|napisał|skrev|>:|@[\w.]+>?\)?:\s*$"
    r"|^\s*\**(from|de|von|van|da|fra|od)\s*\**\s*:|-{3,}\s*\w+.*(message|nachricht|meddelelse|besked)"
    r"|^_{10,}",
    re.IGNORECASE,
)


def quote_format(entry: Entry) -> tuple[list[str], list[str], str] | None:
    """(own lines, quote-introducing lines, quoted-line prefix) of a corpus reply."""
    assert entry.body is not None
    lines = entry.body.replace("\r\n", "\n").split("\n")
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


def decision_variants(
    entries: list[Entry], mails: dict[str, TokenMail]
) -> Iterator[tuple[str, bytes, str, str | None]]:
    """(label, raw, expected verb, expected token) for every corpus reply format."""
    default = (
        [],
        ["On Mon, Mar 2, 2026 at 10:00 AM mailbot <changes@mailbot.example> wrote:"],
        "> ",
    )
    for entry in entries:
        if entry.category != "reply" or entry.body is None or entry.path.endswith(".html"):
            continue
        found = quote_format(entry)
        own, header, prefix = found if found is not None else default
        for language, shared in mails.items():
            mail = shared.with_token(some_token())
            quoted = [
                (prefix + line).rstrip() if line.strip() else prefix.rstrip()
                for line in mail.text.splitlines()
            ]
            for template, verb, with_token in COMMANDS[language]:
                command = template.format(token=tokens.group(mail.token))
                for number, (extra, gap) in enumerate(SHAPES):
                    own_lines = own[:6] if extra else []
                    body = "\n".join([command, *gap, *own_lines, *gap, *header, "", *quoted])
                    subject = SUBJECT_FR if language == "fr" else SUBJECT_EN
                    encoding = ENCODINGS[number % len(ENCODINGS)]
                    label = f"{entry.path} [{language}] {command.split()[0]} {extra} {encoding[0]}"
                    raw = wrap(body, subject, encoding=encoding)
                    if number == len(SHAPES) - 1:
                        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                    yield label, raw, verb, mail.token if with_token else None


SHAPES = [("alone", [""]), ("+own text", [""]), ("alone", []), ("+own text", [])]
"""The command alone or before the reply's own text; a blank line before the quote or not."""


def html_variants(mails: dict[str, TokenMail]) -> Iterator[tuple[str, bytes, str, str | None]]:
    """HTML-only replies as Gmail, Outlook, Apple Mail and Thunderbird write them."""
    for language, shared in mails.items():
        mail = shared.with_token(some_token())
        original = mail.html.split("<body", 1)[-1].split(">", 1)[-1].rsplit("</body>", 1)[0]
        for name, build in HTML_CLIENTS.items():
            for template, verb, with_token in COMMANDS[language]:
                command = template.format(token=tokens.group(mail.token))
                html = build(command, original)
                subject = SUBJECT_FR if language == "fr" else SUBJECT_EN
                yield (
                    f"html:{name} [{language}] {command.split()[0]}",
                    wrap(html, subject, html=True),
                    verb,
                    mail.token if with_token else None,
                )


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


# -- forwards -------------------------------------------------------------------------


def corpus_forwards(entries: list[Entry]) -> tuple[int, int, int, list[str]]:
    """(total, recognised, attributed to the right sender, failures)."""
    total = recognised = attributed = 0
    failures: list[str] = []
    for entry in entries:
        if not entry.expected.get("is_forwarded"):
            continue
        total += 1
        parsed = mailparse.parse(entry.raw)
        if parsed.forwarded is None:
            failures.append(f"not recognised: {entry.path}")
            continue
        recognised += 1
        expected = str(entry.expected["forwarded_from"]["address"]).lower()
        if parsed.forwarded.sender == expected:
            attributed += 1
        else:
            failures.append(f"wrong sender {parsed.forwarded.sender}: {entry.path}")
    return total, recognised, attributed, failures


def agency_variants(
    entries: list[Entry], mail: TokenMail
) -> Iterator[tuple[str, bytes, str, str | None]]:
    """A customer's ``ACCEPT <token>`` forwarded by an agency, in every corpus format."""
    command = f"ACCEPT {tokens.group(mail.token)}"
    for entry in entries:
        if (
            not entry.expected.get("is_forwarded")
            or entry.body is None
            or FORWARD_LINE not in entry.body
        ):
            continue
        body = entry.body.replace(FORWARD_LINE, command, 1)
        subject = entry.expected.get("input_subject", "Fwd: Integer consequat non purus")
        yield (
            f"inline:{entry.path}",
            wrap(body, subject, sender="agency@agency.example"),
            "ACCEPT",
            mail.token,
        )
    reply = EmailMessage()
    reply["From"] = CONTACT
    reply["To"] = BOT
    reply["Subject"] = "Re: " + mail.subject
    quoted = "\n".join("> " + line for line in mail.text.splitlines())
    reply.set_content(f"{command}\n\nOn Mon, Mar 2, 2026, mailbot <{BOT}> wrote:\n{quoted}\n")
    for name, template in HTML_FORWARDS.items():
        html = template.replace("{command}", command)
        raw = wrap(html, "Fwd: Validation", html=True, sender="agency@agency.example")
        yield f"html:{name}", raw, "ACCEPT", mail.token
    for note in ("", "Hello, please find our customer's answer attached.\n"):
        outer = EmailMessage()
        outer["From"] = "Agency <agency@agency.example>"
        outer["To"] = BOT
        outer["Subject"] = "Fwd: " + str(reply["Subject"])
        outer.set_content(note or "\n")
        outer.add_attachment(reply)
        yield f"attached:{'with note' if note else 'bare'}", outer.as_bytes(), "ACCEPT", mail.token


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


# -- robots ---------------------------------------------------------------------------


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


def bounce_recipients(entries: list[Entry], *, library: bool) -> tuple[int, int, int, list[str]]:
    """(bounces, recognised, recipients exactly right where listed, failures)."""
    previous = bounces.LIBRARY_DETECTORS
    bounces.LIBRARY_DETECTORS = library
    try:
        total = recognised = right = 0
        failures: list[str] = []
        for entry in entries:
            if entry.expected.get("is_bounce") is not True:
                continue
            total += 1
            bounce = mailparse.parse(entry.raw).bounce
            if bounce is None:
                failures.append(f"not recognised: {entry.path}")
                continue
            recognised += 1
            wanted = entry.expected.get("bounced_recipients")
            if wanted is None or {str(a).lower() for a in wanted} == set(bounce.recipients):
                right += 1
            else:
                failures.append(f"recipients {bounce.recipients} != {wanted}: {entry.path}")
        return total, recognised, right, failures
    finally:
        bounces.LIBRARY_DETECTORS = previous


# -- report ---------------------------------------------------------------------------


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.1f}%)" if whole else "0/0"


def show_failures(failures: list[str], limit: int = 8) -> None:
    for failure in failures[:limit]:
        print(f"      - {failure}")
    if len(failures) > limit:
        print(f"      … and {len(failures) - limit} more")


def run(root: Path) -> int:
    entries = load_corpus(root)
    mails = {language: token_mail(language) for language in ("en", "fr")}
    print(f"corpus: {root} ({len(entries)} messages)")
    generated: list[bytes] = []
    wrong = decisions_report(entries, mails, generated)
    wrong += forwards_report(entries, mails["en"], generated)
    robots_report(entries)
    false_bounces = bounces_report(entries, generated)
    speed_report([e.raw for e in entries] + generated)
    return 1 if wrong or false_bounces else 0


def decisions_report(
    entries: list[Entry], mails: dict[str, TokenMail], generated: list[bytes]
) -> int:
    replies, html = Tally(), Tally()
    for label, raw, verb, token in decision_variants(entries, mails):
        replies.add(judge(raw, verb, token), label)
        generated.append(raw)
    for label, raw, verb, token in html_variants(mails):
        html.add(judge(raw, verb, token), label)
        generated.append(raw)
    print("\nDecisions (reply above a quote of mailbot's token mail)")
    for name, tally in (("corpus reply formats", replies), ("HTML-only replies", html)):
        print(f"  {name}: correct {percent(tally.correct, tally.total)}, {tally.errors()}")
        show_failures(tally.failures)
    both = replies.correct + html.correct
    wrong = replies.wrong_opposite + html.wrong_opposite
    print(f"  all: correct {percent(both, replies.total + html.total)}, wrong-opposite {wrong}")
    return wrong


def forwards_report(entries: list[Entry], mail: TokenMail, generated: list[bytes]) -> int:
    total, recognised, attributed, failures = corpus_forwards(entries)
    print("\nForwards")
    print(f"  corpus forwards recognised: {percent(recognised, total)}")
    print(f"  attributed to the right original sender: {percent(attributed, total)}")
    show_failures(failures)
    agency = Tally()
    for label, raw, verb, token in agency_variants(entries, mail):
        agency.add(judge(raw, verb, token, forwarded=True), label)
        generated.append(raw)
    print("  agency forwards of ACCEPT <token>, decision and token found in the forwarded")
    print(f"  message: correct {percent(agency.correct, agency.total)}, {agency.errors()}")
    show_failures(agency.failures)
    return agency.wrong_opposite


def robots_report(entries: list[Entry]) -> None:
    robots = [(e.path, e.raw) for e in entries if e.expected.get("is_autoreply")]
    robots += list(synthetic_autoreplies())
    parsed = [(label, mailparse.parse(raw)) for label, raw in robots]
    ignored = [label for label, p in parsed if p.automatic]
    as_bounce = [label for label, p in parsed if p.bounce is not None]
    print("\nAuto-replies (corpus and synthetic French/English out-of-office)")
    print(f"  ignored (automatic): {percent(len(ignored), len(robots))}")
    print(f"  taken for bounces: {len(as_bounce)}")
    show_failures([label for label, _ in robots if label not in ignored])


def bounces_report(entries: list[Entry], generated: list[bytes]) -> int:
    print("\nBounces")
    for library in (False, True):
        total, recognised, right, failures = bounce_recipients(entries, library=library)
        name = "with flufl.bounce" if library else "hand-written only"
        print(f"  {name}: recognised {percent(recognised, total)}", end="")
        print(f"; failed recipients right: {percent(right, total)}")
        show_failures(failures, 4)
    others = [(e.path, e.raw) for e in entries if e.expected.get("is_bounce") is not True]
    others += [(f"generated #{i}", raw) for i, raw in enumerate(generated)]
    false = [label for label, raw in others if mailparse.parse(raw).bounce is not None]
    print(f"  non-bounces taken for bounces: {len(false)} of {len(others)}")
    show_failures(false)
    return len(false)


def speed_report(messages: list[bytes]) -> None:
    times: list[float] = []
    for raw in messages:
        started = time.perf_counter()
        mailparse.parse(raw)
        times.append(time.perf_counter() - started)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    median = statistics.median(times)
    print(f"\nSpeed (parse time over {len(times)} messages)")
    print(
        f"  median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    return run(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
