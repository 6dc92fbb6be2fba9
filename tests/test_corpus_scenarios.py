"""Real-world formats end to end through the service: every corpus reply format
answering REFUSE above a quote of mailbot's own token mail (which says ACCEPT),
and every corpus forward format carrying a contact's ``ACCEPT <token>`` through
the agency mailbox. And the mail-understanding benchmark itself, on a corpus
with rows it cannot score.

The corpus is data beside the repository (``$MAILBOT_CORPUS``, default
``../shared/corpus``); without it the corpus tests skip, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType

import pytest
from conftest import CORPUS, has_corpus, require_corpus
from factories import ALICE, CAROL, MailFactory, Sent, outbox, send

from mailbot.mailparse.quotes import first_cut
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction

REPO = Path(__file__).resolve().parent.parent
ON_THE_SERVICE = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.usefixtures("world", "_corpus"),
]


def _bench() -> ModuleType:
    """The corpus reader and quote-format finder of the mail-understanding benchmark."""
    path = REPO / "benchmarks" / "mail_understanding.py"
    spec = importlib.util.spec_from_file_location("mail_understanding", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mail_understanding", module)
    spec.loader.exec_module(module)
    return module


BENCH = _bench() if has_corpus() else None
ENTRIES = BENCH.load_corpus(CORPUS) if BENCH else []


@pytest.fixture
def _corpus() -> None:
    require_corpus()


@pytest.mark.usefixtures("_corpus")
def test_the_corpus_is_there() -> None:
    """Fails under CI=true without the corpus (the tests below would have no cases)."""
    assert ENTRIES


def _quote_format(entry: object) -> tuple[list[str], str] | None:
    """The lines that introduce a corpus reply's quote, and its quoting prefix.

    Formats whose quote mailparse cannot find from those lines alone (a mailing
    list footer taken for a quote header, say) are left out: pasting our mail
    below them unquoted is not a reply format, and its ACCEPT lines would rightly
    make the answer ambiguous.
    """
    assert BENCH is not None
    found = BENCH.quote_format(entry)
    if found is None:  # a reply with no quote of its own: quote the usual way
        return ["On Mon, Mar 2, 2026, mailbot <changes@bot.test> wrote:"], "> "
    _, header, prefix = found
    if prefix.strip() or first_cut([*header, "", "quoted text"]) is not None:
        return header, prefix
    return None


REPLIES = [
    e
    for e in ENTRIES
    if e.category == "reply"
    and e.body is not None
    and not e.path.endswith(".html")
    and _quote_format(e) is not None
]
FORWARDS = [
    e
    for e in ENTRIES
    if e.expected.get("is_forwarded")
    and e.body is not None
    and BENCH
    and BENCH.FORWARD_LINE in e.body
]


def token_mail_for(bot: Mailbot, mail: MailFactory, to: str = CAROL) -> Sent:
    """Open a fresh request (closing any earlier one) and return ``to``'s token mail."""
    with transaction(bot.engine) as session:
        pending = [row.id for row in queries.requests(session, status="pending")]
    for request_id in pending:
        bot.cancel_request(request_id)
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    return next(m for m in mails if m.event == "validation-requested" and m.to == to)


@ON_THE_SERVICE[0]
@ON_THE_SERVICE[1]
@pytest.mark.parametrize("entry", REPLIES, ids=lambda e: e.path)
def test_refuse_in_a_real_reply_format_above_our_token_mail(
    bot: Mailbot, mail: MailFactory, entry: object
) -> None:
    assert BENCH is not None
    ask = token_mail_for(bot, mail)
    found = _quote_format(entry)
    assert found is not None
    header, prefix = found
    quoted = [(prefix + line).rstrip() for line in ask.text.splitlines()]
    assert any("ACCEPT" in line for line in quoted)
    reply = EmailMessage()
    reply["From"], reply["To"] = f"Carol <{CAROL}>", "changes@bot.test"
    reply["Subject"] = f"RE: {ask.header('Subject')}"
    reply["Message-ID"] = f"<{abs(hash(entry.path))}@client.test>"  # type: ignore[attr-defined]
    reply.set_content("\n".join(["REFUSE", "", *header, "", *quoted]))
    mails = send(bot, reply.as_bytes())  # no thread, no plus address: the quote is the key
    assert {m.event for m in mails} == {"request-refused"}, [m.event for m in mails]


@ON_THE_SERVICE[0]
@ON_THE_SERVICE[1]
@pytest.mark.parametrize("entry", FORWARDS, ids=lambda e: e.path)
def test_a_real_forward_format_through_the_agency_mailbox(
    bot: Mailbot, mail: MailFactory, entry: object
) -> None:
    assert BENCH is not None
    ask = token_mail_for(bot, mail)
    token = next(w for w in ask.text.split() if w.count("-") == 4 and len(w) == 24)
    body = entry.body.replace(BENCH.FORWARD_LINE, f"ACCEPT {token}", 1)  # type: ignore[attr-defined]
    subject = entry.expected.get("input_subject", "Fwd: validation")  # type: ignore[attr-defined]
    raw = BENCH.wrap(body, subject, sender="desk@agency.test")
    mails = send(bot, raw, source="imap")
    assert [(m.event, m.to) for m in mails] == [("validation-recorded", CAROL)]
    assert outbox(bot)[-1].event == "validation-recorded"


# -- the benchmark on any corpus ----------------------------------------------------------

GMAIL_DE_REPLY = """Danke, passt so.

Am Mo., 2. März 2026 um 10:00 Uhr schrieb Bob Client <bob@client.example>:
> Hallo Alice,
> passt der Termin?
"""
GMAIL_EN_FORWARD = """FYI

---------- Forwarded message ---------
From: Bob Client <bob@client.example>
Date: Mon, Mar 2, 2026 at 11:00 AM
Subject: Quote
To: Alice Martin <alice@customer.example>

Please find the quote attached.
"""
OUT_OF_OFFICE = b"""From: Dana Lopez <dana@customer.example>
To: changes@mailbot.example
Subject: Automatic reply: Quote
Auto-Submitted: auto-replied

I am out of the office until Monday.
"""
NOT_DELIVERED = b"""From: Mail Delivery System <MAILER-DAEMON@mx.example>
To: alice@customer.example
Subject: Undelivered Mail Returned to Sender

This is the mail system at host mx.example.
I'm sorry to have to inform you that your message could not be delivered.
"""


def _corpus_dir(root: Path, rows: list[tuple[str, ...]], files: dict[str, str | bytes]) -> None:
    """A corpus laid out like the shared one: manifest.tsv, messages, expected files."""
    root.mkdir(parents=True)
    header = "path\tcategory\tclient_or_mta\tlanguage\texpected_file"
    lines = [header, *("\t".join(row) for row in rows)]
    (root / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (root / name).write_bytes(data)


def _broken_corpora(parent: Path) -> None:
    """Two corpora: one good row of each kind among rows that cannot be scored."""
    _corpus_dir(
        parent / "replies",
        [
            ("de.txt", "reply", "Gmail", "de", "de.expected.json"),
            ("invite.eml", "calendar", "Outlook", "en", "-"),
            ("bad.txt", "reply", "Apple Mail", "fr", "bad.expected.json"),
            ("gone.eml", "reply", "Thunderbird", "it", "-"),
            ("half-a-row.txt", "reply"),
        ],
        {
            "de.txt": GMAIL_DE_REPLY,
            "de.expected.json": json.dumps(
                {"reply_text": "Danke, passt so.", "compare": "trim()", "decision": None}
            ),
            "invite.eml": OUT_OF_OFFICE.replace(b"Automatic reply", b"Invitation"),
            "bad.txt": "OK\n",
            "bad.expected.json": '{"reply_text": "OK",',
        },
    )
    _corpus_dir(
        parent / "forwards",
        [
            ("en.txt", "forwarded", "Gmail", "en", "en.expected.json"),
            ("nl.txt", "forwarded", "Thunderbird", "nl", "nl.expected.json"),
            ("dsn.eml", "bounce", "Postfix", "en", "dsn.expected.json"),
            ("empty.eml", "other", "-", "-", "-"),
            ("away.eml", "autoreply", "Exchange", "en", "-"),
        ],
        {
            "en.txt": GMAIL_EN_FORWARD,
            "en.expected.json": json.dumps(
                {
                    "is_forwarded": True,
                    "forwarded_from": {"address": "bob@client.example"},
                    "forwarded_body": "Please find the quote attached.",
                    "forwarded_decision": None,
                }
            ),
            "nl.txt": GMAIL_EN_FORWARD,
            "nl.expected.json": json.dumps({"is_forwarded": True, "forwarded_subject": "Quote"}),
            "dsn.eml": NOT_DELIVERED,
            "dsn.expected.json": json.dumps({"is_bounce": True}),
            "empty.eml": "",
            "away.eml": OUT_OF_OFFICE,
        },
    )


def test_the_benchmark_counts_the_rows_it_cannot_score(tmp_path: Path) -> None:
    """Broken rows are reported with their reason; every corpus of a directory is scored."""
    _broken_corpora(tmp_path / "corpora")
    script = REPO / "benchmarks" / "mail_understanding.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "corpora")],
        capture_output=True,
        text=True,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, run.stderr + out
    assert "Traceback" not in run.stderr
    assert f"corpus: {tmp_path / 'corpora' / 'forwards'} (4 messages)" in out
    assert f"corpus: {tmp_path / 'corpora' / 'replies'} (2 messages)" in out
    assert "8 cases not scorable" in out
    for reason in (
        "unknown category 'calendar'",
        "expected file is not valid JSON",
        "message file missing",
        "manifest row with 2 columns, not 5",
        "forward without forwarded_from address",
        "bounce without bounced_recipients",
        "message file empty",
        "autoreply without an expected file",
    ):
        assert f"{reason} (1)" in out, reason
    assert re.search(r"^ +Gmail +de +1/1 ", out, re.MULTILINE), out
    assert re.search(r"^ +Gmail +en +1/1 ", out, re.MULTILINE), out
    assert "Side by side on the same cases" in out
    assert re.search(r"^ +reply: new text as expected +1 +1/0/0 ", out, re.MULTILINE), out
    assert re.search(r"^ +reply: decision as expected +1 +1/0/0 ", out, re.MULTILINE), out
    assert re.search(r"^ +forwarded: decision as expected +1 +1/0/0 ", out, re.MULTILINE), out
    # the corpus forward carrying ACCEPT <token>, and the 4 HTML and 2 attached synthetic ones
    assert re.search(r"^ +agency forward decisions +7 +7/0/0 ", out, re.MULTILINE), out
    libraries = (("email-reply-parser", "email_reply_parser"), ("quotequail", "quotequail"))
    for name, module in libraries:
        installed = importlib.util.find_spec(module) is not None
        assert (f"{name}: not installed: pip install '.[bench]'" in out) is not installed
