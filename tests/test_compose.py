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


TRICKY_TEXTS = [
    "plain ASCII\nin two lines\n",
    "Bonjour Jösé, ça va ? Ελληνικά, 日本語, emoji 📬\n",
    "a line far longer than seventy-eight characters " * 6 + "\nand a short one",
    ".a line that starts with a dot\n..two dots\n.\n",
    "trailing spaces   \ntrailing tab\t\nend without newline",
    "CRLF\r\nlines\r\nand a lone CR\rtoo\n",
    "=3D looks encoded, =?utf-8?q?so_does_this?= and --=_mailbot_ a boundary\n",
    "",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_both_bodies_read_back_as_they_were_written(text: str) -> None:
    raw = compose(envelope(), RenderedMail("s", text, f"<p>{text}</p>"))
    message = parse(raw)
    assert not message.defects
    lines = text.replace("\r\n", "\n").replace("\r", "\n")
    expected = lines if lines.endswith("\n") else lines + "\n"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert html.get_content().startswith("<p>")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "value",
    [
        "Alice Martin",
        'Martin, Alice "Al" (admin) <x@y>',
        "Jösé Ñame-Müller",
        "Sale =?! today, =?utf-8?x?broken",
        "a very long display name that goes on and on past the end of any reasonable line",
    ],
)
def test_names_and_subjects_read_back_as_they_were_given(value: str) -> None:
    raw = compose(envelope(to_name=value), RenderedMail(value, "t", "h"))
    message = parse(raw)
    assert message["To"].addresses[0].display_name == value
    assert message["To"].addresses[0].addr_spec == "carol@agency.test"
    assert message["Subject"] == value
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head.decode()


def test_a_non_ascii_address_is_written_as_utf8_not_as_encoded_words() -> None:
    raw = compose(envelope(to="josé@exämple.test", to_name="José"), RenderedMail("s", "t", "h"))
    assert "<josé@exämple.test>".encode() in raw
    message = email.message_from_string(raw.decode(), policy=policy.default)  # RFC 6532
    assert message["To"].addresses[0].addr_spec == "josé@exämple.test"


def test_a_thread_keeps_the_ids_that_can_be_written_back() -> None:
    raw = compose(
        envelope(in_reply_to="<orig@client.test>", references=("bad id@x", "<first@client.test>")),
        RenderedMail("s", "t", "h"),
    )
    message = parse(raw)
    assert message["In-Reply-To"] == "<orig@client.test>"
    assert message["References"] == "<first@client.test> <orig@client.test>"
