"""The sender read strictly from the raw From header, and what the front MTA's
Authentication-Results say of it: pure functions, no database."""

from __future__ import annotations

import pytest

from mailbot import mailparse
from mailbot.config import SmtpSettings
from mailbot.mailparse.authentication import FAIL, NONE, PASS, aligned, verdict

FORGED = {
    "encoded display name holding an address": b"=?utf-8?q?alice@example.com?= <mallory@evil.test>",
    "bare address as display name": b"alice@example.com <mallory@evil.test>",
    "quoted address as display name": b'"alice@example.com" <mallory@evil.test>',
    "two addresses": b"alice@example.com, mallory@evil.test",
    "stray parenthesis": b"alice@example.com)<mallory@evil.test>",
    "two From headers": b"<alice@example.com>\r\nFrom: <mallory@evil.test>",
    "encoded CR LF and Bcc in the name": (
        b"=?utf-8?q?Alice=0D=0ABcc=3A_victim=40evil.test?= <alice@example.com>"
    ),
    "NUL in the local part": b"ali\x00ce@example.com",
    "encoded word as the whole value": b"=?utf-8?q?alice=40example.com?=",
    "encoded word inside the brackets": b"<=?utf-8?q?alice=40example.com?=>",
    "encoded NUL in the name": b"=?utf-8?q?Ali=00ce?= <alice@example.com>",
    "group syntax": b"Friends: alice@example.com;",
    "empty group": b"undisclosed-recipients:;",
    "quoted local part": b'"alice@example.com"@evil.test',
    "two bracketed addresses": b"<alice@example.com> <mallory@evil.test>",
    "unclosed bracket": b"Alice <alice@example.com",
    "unclosed quote": b'"Alice <alice@example.com>',
    "text after the address": b"<alice@example.com> mallory@evil.test",
    "raw CR in the name": b"Alice\rBcc: x@evil.test <alice@example.com>",
    "base64 name hiding a LF": (
        b"=?utf-8?b?QWxpY2UKQmNjOiB4QGV2aWwudGVzdA==?= <alice@example.com>"
    ),
    "address-looking comment": b"mallory@evil.test (alice@example.com)",
    "empty address": b"Alice <>",
    "route address": b"<@relay.test:alice@example.com>",
    "domain literal": b"alice@[192.0.2.1]",
}

ORDINARY = {
    b"Alice Martin <alice@example.com>": ("alice@example.com", "Alice Martin"),
    b'"Martin, Alice" <alice@example.com>': ("alice@example.com", "Martin, Alice"),
    b"=?utf-8?q?Jos=C3=A9_Mart=C3=ADn?= <jose@example.com>": ("jose@example.com", "José Martín"),
    b'"=?utf-8?q?Jos=C3=A9?=" <jose@example.com>': ("jose@example.com", "José"),
    b"alice@example.com (Alice Martin)": ("alice@example.com", "Alice Martin"),
    b"<Alice@Example.COM>": ("alice@example.com", ""),
    b"alice@example.com": ("alice@example.com", ""),
    b"John Q. Public <jqp@example.com>": ("jqp@example.com", "John Q. Public"),
    b'"alice@example.com" <alice@example.com>': ("alice@example.com", "alice@example.com"),
    b"Alice\r\n Martin\r\n <alice@example.com>": ("alice@example.com", "Alice Martin"),
    "José <josé@exemple.fr>".encode(): ("josé@exemple.fr", "José"),
    b"Jos\xe9 <jose@example.com>": ("jose@example.com", "José"),
    b"Bob O'Brien <bob+tag@mail.example.com>  ": ("bob+tag@mail.example.com", "Bob O'Brien"),
}


def message(from_line: bytes) -> bytes:
    return b"From: " + from_line + b"\r\nTo: changes@bot.test\r\nSubject: HELP\r\n\r\nHELP\r\n"


@pytest.mark.parametrize("from_line", FORGED.values(), ids=FORGED.keys())
def test_an_ambiguous_from_is_refused_never_reinterpreted(from_line: bytes) -> None:
    parsed = mailparse.parse(message(from_line))
    assert parsed.sender is None
    assert parsed.sender_problem
    assert parsed.automatic  # never acted on nor answered


@pytest.mark.parametrize(("from_line", "expected"), ORDINARY.items())
def test_ordinary_froms_still_read(from_line: bytes, expected: tuple[str, str]) -> None:
    parsed = mailparse.parse(message(from_line))
    assert (parsed.sender, parsed.sender_name) == expected
    assert parsed.sender_problem == ""


def test_a_missing_from_is_no_sender_but_not_a_forgery() -> None:
    parsed = mailparse.parse(b"To: changes@bot.test\r\nSubject: HELP\r\n\r\nHELP\r\n")
    assert parsed.sender is None
    assert parsed.sender_problem == ""


def test_an_attached_message_with_a_forged_from_names_no_sender() -> None:
    inner = message(b"=?utf-8?q?alice@example.com?= <mallory@evil.test>")
    raw = (
        b"From: Carol <carol@agency.test>\r\nTo: changes@bot.test\r\nSubject: Fwd: x\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--b--\r\n"
    )
    parsed = mailparse.parse(raw)
    assert parsed.sender == "carol@agency.test"
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender is None


def test_every_authentication_results_header_is_kept_in_order() -> None:
    raw = (
        b"Authentication-Results: mx.bot.test;\r\n\tdmarc=pass header.from=example.com\r\n"
        b"Authentication-Results: other.test; dmarc=fail\r\n" + message(b"alice@example.com")
    )
    assert mailparse.parse(raw).authentication_results == (
        "mx.bot.test; dmarc=pass header.from=example.com",
        "other.test; dmarc=fail",
    )


MX = "mx.bot.test"


@pytest.mark.parametrize(
    ("headers", "level"),
    [
        ((f"{MX}; dmarc=pass header.from=example.com",), PASS),
        ((f"{MX}; dmarc=fail (p=reject) header.from=example.com",), FAIL),
        (("MX.Bot.Test; dmarc=fail header.from=example.com",), FAIL),  # id case-insensitive
        (("other.test; dmarc=pass header.from=example.com",), NONE),  # foreign id ignored
        ((f"{MX}.evil.test; dmarc=pass",), NONE),  # a longer id is another id
        ((f"{MX}; dmarc=pass header.from=evil.test",), NONE),  # about another domain
        ((f"{MX}; dkim=pass header.d=example.com; dmarc=fail header.from=example.com",), FAIL),
        ((f"{MX}; dkim=pass header.d=example.com",), PASS),
        ((f"{MX}; dkim=pass header.d=mail.example.com",), PASS),
        ((f"{MX}; dkim=pass header.d=evil.test",), NONE),
        ((f"{MX}; dkim=pass header.d=com",), NONE),
        ((f"{MX}; dkim=fail header.d=example.com",), NONE),
        ((f"{MX}; spf=pass smtp.mailfrom=bounces@example.com",), PASS),
        ((f"{MX}; spf=pass smtp.mailfrom=evil.test",), NONE),
        ((f"{MX} 1; spf = pass (sender SPF authorized) smtp.mailfrom=example.com",), PASS),
        ((f"{MX}; dmarc=none header.from=example.com; dkim=pass header.d=example.com",), PASS),
        ((f"{MX}; none",), NONE),
        (
            (f"{MX}; dmarc=pass header.from=example.com", f"{MX}; dmarc=fail"),
            FAIL,  # a failure anywhere wins
        ),
        (("garbage ;;; = ( unbalanced", f"{MX}; dmarc"), NONE),
        ((f'{MX}; dmarc=pass reason="a;b" header.from=example.com',), PASS),
        ((f"{MX}; dmarc=fail (a (nested) comment; dmarc=pass) header.from=example.com",), FAIL),
    ],
)
def test_only_the_front_mta_speaks(headers: tuple[str, ...], level: str) -> None:
    assert verdict(headers, MX, "example.com").level == level


def test_without_a_configured_authserv_id_nothing_is_trusted() -> None:
    assert verdict((f"{MX}; dmarc=pass",), None, "example.com").level == NONE
    assert verdict((f"{MX}; dmarc=fail",), None, "example.com").level == NONE


@pytest.mark.parametrize(
    ("signer", "sender", "expected"),
    [
        ("example.com", "example.com", True),
        ("Example.COM.", "example.com", True),
        ("example.com", "mail.example.com", True),
        ("mail.example.com", "example.com", True),
        ("com", "example.com", False),
        ("notexample.com", "example.com", False),
        ("", "example.com", False),
    ],
)
def test_alignment(signer: str, sender: str, expected: bool) -> None:
    assert aligned(signer, sender) is expected


def test_the_authserv_id_setting_is_one_word_compared_in_lower_case() -> None:
    assert SmtpSettings().authserv_id is None
    assert SmtpSettings(authserv_id=" MX.Example.NET ").authserv_id == "mx.example.net"
    for bad in ("", "mx; dmarc=pass", "two words"):
        with pytest.raises(ValueError, match="authserv-id"):
            SmtpSettings(authserv_id=bad)
