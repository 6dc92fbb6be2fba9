"""Real-world formats end to end through the service: every corpus reply format
answering REFUSE above a quote of mailbot's own token mail (which says ACCEPT),
and every corpus forward format carrying a contact's ``ACCEPT <token>`` through
the agency mailbox.

The corpus is data beside the repository (``$MAILBOT_CORPUS``, default
``../shared/corpus``); without it these tests skip, except under ``CI=true``,
where they fail.
"""

from __future__ import annotations

import importlib.util
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
pytestmark = [
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.usefixtures("world"),
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


@pytest.fixture(autouse=True)
def _corpus() -> None:
    require_corpus()


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
