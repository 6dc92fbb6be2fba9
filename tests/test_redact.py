"""What is taken out of stored mail and logs: every form a token or reply key is
written in, and nothing a person needs to read the audit copy."""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailbot import tokens
from mailbot.mailparse import redact

TOKEN = "7KQ2X9JM4TRD8WPA3HNB"
KEY = "ABCDEFGHJKMNPQRSTV12"


@pytest.mark.parametrize(
    "written",
    [
        "7KQ2-X9JM-4TRD-8WPA-3HNB",
        "7kq2-x9jm-4trd-8wpa-3hnb",
        "7KQ2 X9JM 4TRD 8WPA 3HNB",
        "7KQ2X 9JM4T RD8WP A3HNB",
        TOKEN,
        TOKEN.lower(),
        f"https://bot.test/v/{TOKEN}",
        f"https://safe.links.test/?url=https%3A%2F%2Fbot.test%2Fv%2F{TOKEN}&x=1",
        f"Reply-To: mailbot <changes+{KEY.lower()}@bot.test>",
        f"for <Changes+{KEY}@bot.test>; Mon, 2 Mar 2026",
    ],
)
def test_every_written_form_of_a_secret_is_redacted(written: str) -> None:
    out = redact.text(f"> ACCEPT {written} thanks", "changes")
    compact = out.upper().replace("-", "").replace(" ", "")
    assert TOKEN not in compact
    assert KEY not in compact
    assert redact.MARK in out


@pytest.mark.parametrize(
    "kept",
    [
        "ACCEPT, I agree with this change of the technical contact.",
        "Request CR-7K2QX9MD for example.com",
        "have been with your team for four years",
        "changes+bounce-3f2a9c@bot.test",
        "carol@agency.test",
    ],
)
def test_ordinary_words_and_bounce_addresses_are_kept(kept: str) -> None:
    assert redact.text(kept, "changes") == kept


def test_a_reply_key_leaves_the_recipients_but_the_address_stays() -> None:
    stored = f"changes+{KEY.lower()}@bot.test,changes@bot.test"
    assert redact.addresses(stored, "changes") == "changes+[redacted]@bot.test,changes@bot.test"


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
def test_a_token_hidden_by_a_transfer_encoding_is_redacted_and_the_rest_kept(cte: str) -> None:
    message = EmailMessage(policy=SMTP)
    message["From"] = "carol@agency.test"
    message["To"] = f"changes+{KEY}@bot.test"
    message["Subject"] = f"Réf : ACCEPTER {tokens.group(TOKEN)}"  # RFC 2047 encoded
    message["Message-ID"] = "<reply.1@agency.test>"
    link = "x" * 46 + f" https://bot.test/v/{TOKEN}"  # a soft line break cuts the token
    message.set_content(f"Je valide, merci.\n\n> {link}\n", cte=cte)
    raw = message.as_bytes()
    out = message_from_bytes(redact.raw_message(raw, "changes"), policy=SMTP)
    body = out.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    seen = (body + str(out["Subject"]) + str(out["To"])).upper().replace("-", "")
    assert TOKEN not in seen
    assert TOKEN[-8:] not in seen  # nor what is left of it after a line break
    assert KEY not in seen
    assert "Je valide, merci." in body
    assert out["Message-ID"] == "<reply.1@agency.test>"


def test_a_message_the_email_package_cannot_write_back_is_still_redacted() -> None:
    raw = f"Subject: ACCEPT {TOKEN}\r\nContent-Type: multipart/mixed\r\n\r\n{TOKEN}\r\n".encode()
    assert TOKEN.encode() not in redact.raw_message(raw, "changes")


def test_a_reply_key_has_a_tokens_strength_and_is_read_in_any_case() -> None:
    key = tokens.new_key()
    assert len(key) * 5 >= 100
    assert set(key) <= set(tokens.ALPHABET)
    assert tokens.normalise_key(key.lower()) == key


def test_an_attachment_survives_redaction_intact() -> None:
    message = EmailMessage(policy=SMTP)
    message["From"] = "carol@agency.test"
    message.set_content(f"ACCEPT {TOKEN}")
    picture = bytes(range(256)) * 40
    message.add_attachment(picture, maintype="image", subtype="png", filename="logo.png")
    out = message_from_bytes(redact.raw_message(message.as_bytes(), "changes"), policy=SMTP)
    (attached,) = list(out.iter_attachments())
    assert attached.get_content() == picture
    assert TOKEN not in out.get_body(("plain",)).get_content()  # type: ignore[union-attr]
