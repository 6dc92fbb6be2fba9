"""Deduplication by content: the same message twice acts once, whatever trace
headers the routes added; a different message that reuses a Message-ID acts;
rows stored under the keys of earlier versions still recognise their copies."""

from __future__ import annotations

from typing import Any

import pytest
from factories import ALICE, BOB, CAROL, MailFactory, outbox

from mailbot.intake import RawMail
from mailbot.service import Mailbot
from mailbot.storage.engine import transaction
from mailbot.storage.tables import InboundRow

pytestmark = pytest.mark.usefixtures("world")

TRACE = {
    "Received": "from relay{n}.test by mx.bot.test; Mon, 2 Mar 2026 09:0{n}:00 +0000",
    "Return-Path": "<bounces+{n}@client.test>",
    "Delivered-To": "changes+{n}@bot.test",
    "X-Original-To": "route{n}@bot.test",
    "Authentication-Results": "mx{n}.bot.test; dkim=pass header.d=client.test",
    "ARC-Seal": "i={n}; a=rsa-sha256; d=relay{n}.test; s=arc; b=c2lnbmF0dXJl{n}",
    "ARC-Message-Signature": "i={n}; a=rsa-sha256; d=relay{n}.test; b=bXNn{n}",
    "ARC-Authentication-Results": "i={n}; mx{n}.bot.test; spf=pass",
}


def routed(raw: bytes, n: int) -> bytes:
    """``raw`` as it arrives by route ``n``: trace headers prepended, as relays do."""
    trace = "".join(f"{name}: {value.format(n=n)}\r\n" for name, value in TRACE.items())
    return trace.encode() + raw


def help_answers(bot: Mailbot) -> list[str]:
    return [m.to for m in outbox(bot) if m.event == "help"]


def test_the_same_message_by_two_routes_is_one_message(mail: MailFactory) -> None:
    raw = mail(BOB, "HELP", message_id="<one@client.test>")
    one, other = RawMail(routed(raw, 1)), RawMail(routed(raw, 2))
    assert one.raw != other.raw
    assert one.dedup_key == other.dedup_key
    refolded = RawMail(routed(raw, 3).replace(b"\r\n", b"\n"))  # line endings changed
    assert refolded.dedup_key == one.dedup_key


@pytest.mark.parametrize(
    "change",
    [
        {"sender": CAROL},
        {"subject": "LIST"},
        {"body": "something else"},
        {"headers": {"In-Reply-To": "<other@bot.test>"}},
    ],
)
def test_a_different_message_with_the_same_message_id_is_another_message(
    mail: MailFactory, change: dict[str, Any]
) -> None:
    base: dict[str, Any] = {"sender": BOB, "subject": "HELP", "body": ""}
    first = mail(**base, message_id="<reused@client.test>")
    second = mail(**{**base, **change}, message_id="<reused@client.test>")
    assert RawMail(first).dedup_key != RawMail(second).dedup_key


def test_a_redelivered_message_acts_once_and_a_reused_id_acts_again(
    bot: Mailbot, mail: MailFactory
) -> None:
    raw = mail(BOB, "HELP", message_id="<again@client.test>")
    bot.receive(routed(raw, 1), source="smtp")
    assert bot.receive(routed(raw, 2), source="smtp").startswith("duplicate")
    other = mail(CAROL, "HELP", message_id="<again@client.test>")
    bot.receive(routed(other, 1), source="smtp")
    assert help_answers(bot) == [BOB, CAROL]


def test_rows_stored_under_earlier_keys_still_catch_their_copies(
    bot: Mailbot, mail: MailFactory
) -> None:
    """A database written by an earlier version keyed by Message-ID (or by the
    bytes' digest): a copy of such a message is still a duplicate, a different
    message reusing its Message-ID is not."""
    old = mail(ALICE, "HELP", message_id="<before@client.test>")
    stored = bot.store_inbound(old, source="smtp")
    with transaction(bot.engine) as session:
        row = session.get(InboundRow, stored.id)
        assert row is not None
        row.dedup_key = "mid:before@client.test"  # as earlier versions stored it
        row.status = "processed"
    assert bot.receive(routed(old, 1), source="smtp").startswith("duplicate")
    reused = mail(BOB, "HELP", message_id="<before@client.test>")
    assert not bot.receive(reused, source="smtp").startswith("duplicate")
    assert help_answers(bot) == [BOB]
