from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

import pytest

from mailbot.outgoing.compose import Envelope, bounce_address, bounced_message_id, compose
from mailbot.outgoing.render import RenderedMail

WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def envelope(**overrides: object) -> Envelope:
    values: dict[str, object] = {
        "sender_name": "mailbot",
        "sender": "changes@bot.test",
        "to_name": "Carol",
        "to": "carol@agency.test",
        "event": "error",
        "language": "en",
        "date": WHEN,
        "message_id": "abc@bot.test",
    }
    values.update(overrides)
    return Envelope(**values)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_every_mail_carries_the_pinned_headers() -> None:
    raw = compose(
        envelope(request_id="CR-7K2QX9MD", error_code="bad-token", in_reply_to="orig@client.test"),
        RenderedMail("Subject", "text", "<p>html</p>"),
    )
    message = parse(raw)
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == "<abc@bot.test>"
    assert message["X-Mailbot-Event"] == "error"
    assert message["X-Mailbot-Request"] == "CR-7K2QX9MD"
    assert message["X-Mailbot-Error"] == "bad-token"
    assert message["In-Reply-To"] == "<orig@client.test>"
    assert message["X-Loop"] == "changes@bot.test"
    assert message.get_body(("plain",)) is not None
    assert message.get_body(("html",)) is not None


def test_mail_that_answers_nothing_is_auto_generated() -> None:
    message = parse(compose(envelope(), RenderedMail("s", "t", "h")))
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Mailbot-Request"] is None


@pytest.mark.parametrize(
    "evil",
    [
        "Carol\r\nBcc: victim@evil.test",
        "Carol\nBcc: victim@evil.test",
        "=?utf-8?q?Carol=0D=0ABcc=3A_victim=40evil=2Etest?=",
        "Carol\r\n\r\nbody injection",
    ],
)
def test_person_supplied_values_cannot_inject_headers(evil: str) -> None:
    raw = compose(envelope(to_name=evil, request_id="CR-X"), RenderedMail(evil, "t", "h"))
    message = parse(raw)
    assert message["Bcc"] is None
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block
    assert b"\r\nbody injection" not in header_block
    assert message["To"].addresses[0].addr_spec == "carol@agency.test"


def test_an_address_with_a_newline_is_refused() -> None:
    with pytest.raises((ValueError, TypeError)):
        compose(envelope(to="carol@agency.test\r\nBcc: x@evil.test"), RenderedMail("s", "t", "h"))


def test_a_bounce_address_leads_back_to_its_mail() -> None:
    address = bounce_address("changes", "bot.test", "0a1b2c@bot.test")
    assert address == "changes+bounce-0a1b2c@bot.test"
    assert bounced_message_id(address.upper(), "changes", "bot.test") == "0a1b2c@bot.test"
    for other in (
        "changes@bot.test",
        "changes+abc@bot.test",
        "other+bounce-0a1b2c@bot.test",
        "changes+bounce-0a1b2c@elsewhere.test",
    ):
        assert bounced_message_id(other, "changes", "bot.test") is None
