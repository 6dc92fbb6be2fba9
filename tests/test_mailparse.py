"""mailparse: replies, HTML, charsets, tokens, forwards, robots, bounces, limits, and the corpus.

The synthetic messages below are what mailbot meets in practice: contacts
answering above (or below) a quote of mailbot's own token mail, which
contains both ACCEPT and REFUSE; agencies forwarding their customers' mail;
out-of-office robots; bounces of mailbot's VERP-addressed mail. The corpus
test at the end replays every message of the shared corpus that has an
expected file.
"""

from __future__ import annotations

import json
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import CORPUS, require_corpus
from test_architecture import IO_LIBRARIES, imports_of

import mailbot
from mailbot import commands, mailparse, tokens
from mailbot.errors import UnknownCommand
from mailbot.mailparse import mime

TOKEN = "7KQ2X9JM4TRD8WPA3HNB"
GROUPED = tokens.group(TOKEN)
BOT = "changes@mailbot.example"
SUBJECT = "Re: [CR-7K2QX9MD] Validation requested: contact change for example.com"

TOKEN_MAIL_EN = f"""Hello Alice Martin,

A change of contacts for example.com (request CR-7K2QX9MD)
has been requested by Alice Martin <alice@customer.example>:

- technical contact: Alice Martin -> Carol <carol@agency.example>

Your personal validation token:

    {GROUPED}

This token is personal and single-use: do not share it and do not
forward this email.

To answer, do one of the following:

- open this link and press Accept or Refuse:
  https://mailbot.example/v/{TOKEN}
- or reply to this email with ACCEPT or REFUSE as the first line of
  your reply (no need to copy the token when you reply);
- or send a new email to {BOT} whose first line is
  ACCEPT {GROUPED}
  (or REFUSE followed by the token).

If you did not expect this request, reply REFUSE, or simply ignore this
email.
"""

TOKEN_MAIL_FR = f"""Bonjour Alice Martin,

Votre code de validation (token) personnel :

    {GROUPED}

- ou répondez à cet e-mail en écrivant ACCEPTER (ou VALIDER) ou REFUSER
  sur la première ligne de votre réponse ;
- ou envoyez un nouvel e-mail à {BOT} dont la première
  ligne est
  ACCEPTER {GROUPED}
  (ou REFUSER suivi du code).

Les mots anglais ACCEPT et REFUSE fonctionnent aussi.

Si vous n'attendiez pas cette demande, répondez REFUSER.
"""


def quoted(text: str, prefix: str = "> ") -> str:
    return "\n".join((prefix + line).rstrip() for line in text.splitlines())


def mail(
    body: str = "",
    *,
    subject: str = SUBJECT,
    sender: str = '"Alice Martin" <Alice@Customer.example>',
    html: str | None = None,
    headers: dict[str, str] | None = None,
    charset: str = "utf-8",
    cte: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = BOT
    message["Subject"] = subject
    message["Message-ID"] = "<reply-1@customer.example>"
    for name, value in (headers or {}).items():
        message[name] = value
    if html is not None and not body:
        message.set_content(html, subtype="html")
    else:
        message.set_content(body, charset=charset, cte=cte)
        if html is not None:
            message.add_alternative(html, subtype="html")
    return message.as_bytes()


def decision(parsed: mailparse.ParsedMail) -> str:
    return commands.find_command(parsed.subject, parsed.new_text).verb


# -- replies above a quote of the token mail ------------------------------------------


def test_english_gmail_reply_above_the_token_mail() -> None:
    body = (
        "ACCEPT\n\nOn Mon, Mar 2, 2026 at 10:00 AM mailbot <changes@mailbot.example> wrote:\n"
        + quoted(TOKEN_MAIL_EN)
    )
    parsed = mailparse.parse(mail(body))
    assert parsed.new_text == "ACCEPT"
    assert decision(parsed) == "ACCEPT"
    assert parsed.tokens_in_new_text == ()
    assert parsed.tokens_in_quote == (TOKEN,)
    assert "REFUSE" in parsed.quoted_text
    assert parsed.sender == "alice@customer.example"
    assert not parsed.automatic


def test_french_reply_with_a_wrapped_attribution() -> None:
    body = (
        "REFUSER\n\nCordialement,\nAlice\n\n"
        "Le lun. 2 mars 2026 à 10:00, mailbot <changes@mailbot.example>\na écrit :\n\n"
        + quoted(TOKEN_MAIL_FR)
    )
    parsed = mailparse.parse(mail(body))
    assert parsed.new_text == "REFUSER"
    assert decision(parsed) == "REFUSE"


def test_a_typed_token_is_found_in_any_grouping_and_case() -> None:
    for typed in (GROUPED, TOKEN.lower(), "7kq2 x9jm 4trd 8wpa 3hnb", "7KQ2X-9JM4T-RD8WP-A3HNB"):
        parsed = mailparse.parse(mail(f"ACCEPT {typed}\n\n> quoted {TOKEN[:10]}"))
        assert parsed.tokens_in_new_text == (TOKEN,), typed


def test_words_and_urls_are_not_tokens() -> None:
    found = mailparse.find_tokens("internationalisation, this that with from some, 12345678")
    assert found == ()
    assert mailparse.find_tokens(f"https://mailbot.example/v/{TOKEN}") == (TOKEN,)


@pytest.mark.parametrize(
    "header",
    [
        "De : mailbot <changes@mailbot.example>\nEnvoyé : lundi 2 mars 2026 10:00\n"
        "À : Alice Martin <alice@customer.example>\nObjet : [CR-7K2QX9MD] Validation",
        "________________________________\nFrom: mailbot <changes@mailbot.example>\n"
        "Sent: Monday, March 2, 2026 10:00 AM\nTo: Alice Martin\nSubject: Validation",
        "-----Original Message-----\nFrom: mailbot [mailto:changes@mailbot.example]\n"
        "Sent: Monday, March 2, 2026 10:00 AM",
        "-----Message d'origine-----\nDe : mailbot\nEnvoyé : lundi 2 mars 2026 10:00",
        "Von: mailbot <changes@mailbot.example>\nGesendet: Montag, 2. März 2026 10:00\n"
        "An: Alice\nBetreff: Validation",
        "Am 02.03.2026 um 10:00 schrieb mailbot <changes@mailbot.example>:",
    ],
)
def test_outlook_and_other_header_blocks_end_the_new_text(header: str) -> None:
    body = f"REFUSE\n\n{header}\n\n{TOKEN_MAIL_EN}"
    parsed = mailparse.parse(mail(body))
    assert parsed.new_text == "REFUSE"
    assert decision(parsed) == "REFUSE"
    assert parsed.tokens_in_quote == (TOKEN,)


@pytest.mark.parametrize(
    "signature",
    [
        "-- \nAlice Martin\nACCEPT nothing",
        "Sent from my iPhone",
        "Envoyé de mon iPhone",
        "Get Outlook for iOS<https://aka.ms/o0ukef>",
        "Von meinem iPhone gesendet",
        "Cordialement,\n\nAlice Martin\nDirectrice technique\n+33 1 23 45 67 89",
        "Best regards,\nAlice",
    ],
)
def test_signatures_are_not_new_text(signature: str) -> None:
    parsed = mailparse.parse(mail(f"ACCEPT {GROUPED}\n\n{signature}\n"))
    assert parsed.new_text == f"ACCEPT {GROUPED}"


def test_a_sentence_starting_like_a_signature_is_kept() -> None:
    text = "Here is another email\n\nSent from my desk, is much easier than my phone."
    assert mailparse.new_text(text) == text


def test_on_at_the_start_of_a_sentence_is_not_an_attribution() -> None:
    text = "On your remote host you can run:\n\n   telnet 127.0.0.1 52698"
    assert mailparse.new_text(text) == text


def test_a_bottom_posted_answer_below_the_quote_is_found() -> None:
    body = (
        "On Mon, Mar 2, 2026 at 10:00 AM mailbot <changes@mailbot.example> wrote:\n"
        + quoted(TOKEN_MAIL_EN)
        + "\n\nREFUSE\n\n-- \nAlice\n"
    )
    parsed = mailparse.parse(mail(body))
    assert parsed.new_text == "REFUSE"
    assert decision(parsed) == "REFUSE"


def test_a_reply_without_new_text_has_no_command() -> None:
    parsed = mailparse.parse(mail("\n\n" + quoted(TOKEN_MAIL_EN)))
    assert parsed.new_text == ""
    with pytest.raises(UnknownCommand):
        commands.find_command("Re: [CR-7K2QX9MD] Validation", parsed.new_text)


# -- HTML-only replies --------------------------------------------------------------------

TOKEN_MAIL_HTML = (
    f"<p>Your personal validation token:</p><p><b>{GROUPED}</b></p><ul><li>reply with "
    f"<code>ACCEPT</code> or <code>REFUSE</code></li><li>or send <code>ACCEPT {GROUPED}"
    "</code></li></ul><p>If you did not expect this request, reply <code>REFUSE</code>.</p>"
)
HTML_REPLIES = {
    "gmail": '<div dir="ltr">{command}<div><br></div><div>Thanks, Alice</div></div><br>'
    '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Mar 2, 2026 at 10:00'
    " AM mailbot &lt;changes@mailbot.example&gt; wrote:<br></div><blockquote "
    'class="gmail_quote">{quote}</blockquote></div>',
    "outlook": '<html><body><div>{command}</div><div id="appendonsend"></div><hr '
    'style="display:inline-block;width:98%" tabindex="-1"><div id="divRplyFwdMsg" dir="ltr">'
    "<b>From:</b> mailbot &lt;changes@mailbot.example&gt;<br><b>Sent:</b> Monday, March 2, "
    "2026 10:00<br><b>To:</b> Alice<br><b>Subject:</b> Validation</div><div>{quote}</div>"
    "</body></html>",
    "apple": '<html><body dir="auto"><div>{command}</div><div><br><div id="AppleMailSignature">'
    "Envoyé de mon iPhone</div><div><br>Le 2 mars 2026 à 10:00, mailbot &lt;changes@"
    'mailbot.example&gt; a écrit&nbsp;:<br><br></div><blockquote type="cite">{quote}'
    "</blockquote></div></body></html>",
    "thunderbird": '<p>{command}</p><div class="moz-cite-prefix">Le 02/03/2026 à 10:00, '
    'mailbot a écrit&nbsp;:<br></div><blockquote type="cite">{quote}</blockquote>',
    "yahoo": '<div>{command}</div><div class="yahoo_quoted"><div>On Monday, March 2, 2026, '
    "10:00 AM, mailbot &lt;changes@mailbot.example&gt; wrote:</div><div>{quote}</div></div>",
}


@pytest.mark.parametrize("client", sorted(HTML_REPLIES))
@pytest.mark.parametrize("command", ["ACCEPT", "REFUSE", f"ACCEPT {GROUPED}"])
def test_html_only_replies_keep_only_the_new_part(client: str, command: str) -> None:
    html = HTML_REPLIES[client].format(command=command, quote=TOKEN_MAIL_HTML)
    parsed = mailparse.parse(mail(html=html))
    assert parsed.from_html
    assert parsed.new_text.splitlines()[0] == command
    assert decision(parsed) == command.split()[0]
    assert parsed.tokens_in_new_text == ((TOKEN,) if GROUPED in command else ())
    assert TOKEN in parsed.tokens_in_quote


def test_html_to_text_keeps_structure_and_drops_scripts() -> None:
    html = "<style>p{}</style><p>Hello&nbsp;<b>there</b></p><script>x()</script><p>Bye</p>"
    assert mailparse.html_to_text(html) == "Hello there\n\nBye"


def test_html_text_part_is_preferred_to_html() -> None:
    parsed = mailparse.parse(mail("ACCEPT\n", html="<p>REFUSE</p>"))
    assert parsed.new_text == "ACCEPT"
    assert not parsed.from_html


# -- charsets and encodings ------------------------------------------------------------------


def test_latin1_quoted_printable_french() -> None:
    body = "ACCEPTER\n\nMerci, c'est noté.\n"
    parsed = mailparse.parse(mail(body, charset="iso-8859-1", cte="quoted-printable"))
    assert parsed.new_text == "ACCEPTER\n\nMerci, c'est noté."


def test_rfc2047_subject_and_sender_name_are_decoded() -> None:
    raw = (
        b"From: =?utf-8?q?Ren=C3=A9e_Dupr=C3=A9?= <renee@example.fr>\r\n"
        b"Subject: =?iso-8859-1?q?R=E9p=2E_=3A_Validation_demand=E9e?=\r\n"
        b"\r\nVALIDER\r\n"
    )
    parsed = mailparse.parse(raw)
    assert parsed.sender_name == "Renée Dupré"
    assert parsed.subject == "Rép. : Validation demandée"
    assert decision(parsed) == "ACCEPT"


def test_raw_8bit_header_bytes_are_read_as_utf8_else_windows_1252() -> None:
    """Some clients send header text unencoded: UTF-8 when it is, else Windows-1252."""
    utf8 = mailparse.parse("From: Renée <r@example.fr>\r\nSubject: Réponse\r\n\r\nOK\r\n".encode())
    assert utf8.subject == "Réponse"
    assert utf8.sender_name == "Renée"
    cp1252 = mailparse.parse(b"From: r@example.fr\r\nSubject: R\xe9ponse \x80\r\n\r\nOK\r\n")
    assert cp1252.subject == "Réponse €"


@pytest.mark.parametrize(
    "charset", ["x-nonsense", "utf-8", "us-ascii", "punycode", "zlib", "", "unicode-1-1-utf-7"]
)
def test_wrong_and_unknown_charsets_decode_with_replacement(charset: str) -> None:
    raw = (
        b"From: a@example.org\r\nSubject: caf\xe9 \xff\r\n"
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n"
        b"ACCEPT\r\nd\xe9j\xe0 \xc3\xa9t\xc3\xa9\r\n"
    )
    parsed = mailparse.parse(raw)
    assert parsed.parse_error == ""
    assert parsed.new_text.startswith("ACCEPT")
    assert parsed.subject.startswith("caf")


def test_broken_base64_and_mbox_from_line() -> None:
    raw = (
        b"From alice@example.org Mon Mar  2 10:00:00 2026\n"
        b"From: alice@example.org\nSubject: x\nContent-Transfer-Encoding: base64\n\n"
        b"QUNDRVBUCg=!!==\n"
    )
    parsed = mailparse.parse(raw)
    assert parsed.sender == "alice@example.org"
    assert parsed.parse_error == ""


# -- forwards -----------------------------------------------------------------------------


def customer_reply(command: str = f"ACCEPT {GROUPED}") -> EmailMessage:
    reply = EmailMessage()
    reply["From"] = "Bob Client <Bob@Client.example>"
    reply["To"] = BOT
    reply["Subject"] = SUBJECT
    reply["Date"] = "Mon, 02 Mar 2026 11:00:00 +0100"
    reply["Message-ID"] = "<bob-1@client.example>"
    reply.set_content(f"{command}\n\nOn Mon, Mar 2, 2026, mailbot wrote:\n{quoted(TOKEN_MAIL_EN)}")
    return reply


def test_message_rfc822_forward_is_attributed_to_its_sender() -> None:
    outer = EmailMessage()
    outer["From"] = "Agency <agency@agency.example>"
    outer["To"] = BOT
    outer["Subject"] = "Fwd: " + SUBJECT
    outer.set_content("Our customer's answer.\n\n-- \nThe Agency\n")
    outer.add_attachment(customer_reply())
    parsed = mailparse.parse(outer.as_bytes())
    forwarded = parsed.forwarded
    assert forwarded is not None
    assert forwarded.attached
    assert (forwarded.sender, forwarded.sender_name) == ("bob@client.example", "Bob Client")
    assert forwarded.subject == SUBJECT
    assert forwarded.message_id == "bob-1@client.example"
    assert forwarded.new_text == f"ACCEPT {GROUPED}"
    assert forwarded.tokens_in_new_text == (TOKEN,)
    assert parsed.forwarder_note == "Our customer's answer."
    assert parsed.bounce is None
    assert not parsed.automatic


INLINE_FORWARDS = {
    "gmail": "---------- Forwarded message ---------\nFrom: Bob Client <bob@client.example>\n"
    "Date: Mon, Mar 2, 2026 at 11:00 AM\nSubject: {subject}\nTo: <{bot}>\n",
    "thunderbird-fr": "-------- Message transféré --------\nSujet : \t{subject}\n"
    "Date : \tMon, 2 Mar 2026 11:00:00 +0100\nDe : \tBob Client <bob@client.example>\n"
    "Pour : \t{bot}\n",
    "thunderbird-en": "-------- Forwarded Message --------\nSubject: \t{subject}\n"
    "Date: \tMon, 2 Mar 2026 11:00:00 +0100\nFrom: \tBob Client <bob@client.example>\n",
    "yahoo-fr": "----- Message transmis -----\nDe : Bob Client <bob@client.example>\n"
    "À : {bot}\nEnvoyé : lundi 2 mars 2026 11:00\nObjet : {subject}\n",
    "apple-fr": "Début du message réexpédié :\n\n> De: Bob Client <bob@client.example>\n"
    "> Objet: {subject}\n> Date: 2 mars 2026 à 11:00:00 UTC+1\n> À: {bot}\n>\n",
    "outlook": "________________________________\nFrom: Bob Client <bob@client.example>\n"
    "Sent: Monday, March 2, 2026 11:00 AM\nTo: {bot}\nSubject: {subject}\n",
    "outlook-fr": "De : Bob Client [mailto:bob@client.example]\nEnvoyé : lundi 2 mars 2026\n"
    "À : {bot}\nObjet : {subject}\n",
    "spanish": "---------- Mensaje reenviado ---------\nDe: Bob Client <bob@client.example>\n"
    "Date: lun, 2 mar 2026 a las 11:00\nSubject: {subject}\n",
}


@pytest.mark.parametrize("client", sorted(INLINE_FORWARDS))
def test_inline_forwards_are_attributed_to_the_original_sender(client: str) -> None:
    header = INLINE_FORWARDS[client].format(subject="Validation", bot=BOT)
    prefix = "> " if client.startswith("apple") else ""
    body = f"FYI, see below.\n\n{header}\n{quoted(f'ACCEPT {GROUPED}', prefix)}\n"
    parsed = mailparse.parse(mail(body, subject="TR: Validation", sender="agency@agency.example"))
    forwarded = parsed.forwarded
    assert forwarded is not None
    assert forwarded.sender == "bob@client.example"
    assert forwarded.sender_name == "Bob Client"
    assert forwarded.subject == "Validation"
    assert forwarded.new_text == f"ACCEPT {GROUPED}"
    assert forwarded.tokens_in_new_text == (TOKEN,)
    assert parsed.forwarder_note == "FYI, see below."


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
    "apple": '<html><body dir="auto"><div>Pour info</div><div><br><blockquote type="cite">'
    'Début du message réexpédié&nbsp;:<br><br></blockquote><blockquote type="cite"><div><b>De:'
    "</b> Bob Client &lt;bob@client.example&gt;<br><b>Date:</b> 2 mars 2026 à 11:00:00 UTC+1"
    "<br><b>À:</b> changes@mailbot.example<br><b>Objet:</b> <b>Validation</b><br></div>"
    '</blockquote><blockquote type="cite"><div dir="ltr">{command}</div></blockquote></div>'
    "</body></html>",
    "thunderbird": '<html><body><p>Pour info</p><div class="moz-forward-container"><br><br>'
    '-------- Message transféré --------<table class="moz-email-headers-table"><tbody><tr><th>'
    "Sujet&nbsp;:</th><td>Validation</td></tr><tr><th>Date&nbsp;:</th><td>Mon, 2 Mar 2026 "
    '11:00:00 +0100</td></tr><tr><th>De&nbsp;:</th><td>Bob Client <a href="mailto:'
    'bob@client.example">&lt;bob@client.example&gt;</a></td></tr><tr><th>Pour&nbsp;:</th><td>'
    "changes@mailbot.example</td></tr></tbody></table><br>{command}</div></body></html>",
}


@pytest.mark.parametrize("client", sorted(HTML_FORWARDS))
def test_html_forwards_are_attributed_to_the_original_sender(client: str) -> None:
    html = HTML_FORWARDS[client].format(command=f"ACCEPT {GROUPED}")
    raw = mail(html=html, subject="Fwd: Validation", sender="agency@agency.example")
    parsed = mailparse.parse(raw)
    forwarded = parsed.forwarded
    assert forwarded is not None
    assert (forwarded.sender, forwarded.sender_name) == ("bob@client.example", "Bob Client")
    assert forwarded.subject == "Validation"
    assert forwarded.new_text == f"ACCEPT {GROUPED}"
    assert forwarded.tokens_in_new_text == (TOKEN,)
    assert parsed.forwarder_note == "Pour info"


def test_an_outlook_header_block_is_a_reply_unless_the_subject_says_forward() -> None:
    body = (
        "ACCEPT\n\nFrom: mailbot <changes@mailbot.example>\nSent: Monday\nTo: Alice\n"
        "Subject: Validation\n\n" + TOKEN_MAIL_EN
    )
    assert mailparse.parse(mail(body)).forwarded is None
    forwarded = mailparse.parse(mail(body, subject="FW: Validation")).forwarded
    assert forwarded is not None
    assert forwarded.sender == "changes@mailbot.example"


@pytest.mark.parametrize(
    "prefix", ["FW:", "Fwd:", "TR:", "WG:", "RV:", "I:", "RIF:", "PD:", "TRS:", "VS:", "転送:"]
)
def test_every_forward_prefix_marks_a_forward_and_is_stripped_from_its_subject(
    prefix: str,
) -> None:
    body = (
        "ACCEPT\n\nFrom: mailbot <changes@mailbot.example>\nSent: Monday\nTo: Alice\n"
        "Subject: Validation\n\n" + TOKEN_MAIL_EN
    )
    forwarded = mailparse.parse(mail(body, subject=f"{prefix} Re: Validation")).forwarded
    assert forwarded is not None
    assert mailparse.strip_subject_prefixes(f"{prefix} Re: Validation") == "Validation"


FORWARD_PREFIXES = [
    "FW:", "Fwd:", "Fw-d:", "TR:", "TRS:", "WG:", "RV:", "ENC:", "VS:", "VB:", "Doorst:",
    "PD:", "I:", "FS:", "RIF:", "Пер:", "Переслать:", "転送:", "转发:", "Fwd[2]:", "転送：",
]  # fmt: skip
REPLY_PREFIXES = ["Re:", "RE:", "AW:", "SV:", "Antw:", "Réf:", "Rép:", "Odp:", "YNT:", "Ответ:"]


@pytest.mark.parametrize("prefix", FORWARD_PREFIXES)
def test_what_counts_as_a_forward_is_what_is_stripped(prefix: str) -> None:
    """One list: a prefix that makes a forward is never left on its subject."""
    forwarded = mailparse.parse(mail(FORWARD_BLOCK, subject=f"{prefix} Validation")).forwarded
    assert forwarded is not None
    assert forwarded.subject == "Validation"
    assert mailparse.strip_subject_prefixes(f"{prefix} Re: Validation") == "Validation"


@pytest.mark.parametrize("prefix", REPLY_PREFIXES)
def test_reply_prefixes_are_stripped_and_make_no_forward(prefix: str) -> None:
    assert mailparse.strip_subject_prefixes(f"{prefix} Validation") == "Validation"
    assert mailparse.parse(mail("Hello", subject=f"{prefix} Validation")).forwarded is None


FORWARD_BLOCK = "See below.\n\nFrom: Carol <carol@agency.example>\nSent: Monday\nTo: Desk\n\nHi\n"


@pytest.mark.parametrize(
    ("subject", "verb", "argument"),
    [
        ("TRS: CHANGE example.com", "CHANGE", "example.com"),
        ("転送: Re: ACCEPT", "ACCEPT", ""),
        ("転送：Re：REFUSE", "REFUSE", ""),
        ("I: RIF: PD: HELP", "HELP", ""),
        ("Fwd: TR: WG: AW: SV: status example.com", "STATUS", "example.com"),
        ("RIF: Re[3]: Fwd: CANCEL", "CANCEL", ""),
    ],
)
def test_a_command_behind_forward_and_reply_prefixes_is_found(
    subject: str, verb: str, argument: str
) -> None:
    parsed = mailparse.parse(mail("", subject=subject))
    command = commands.find_command(parsed.subject, parsed.new_text)
    assert (command.verb, command.argument) == (verb, argument)


# -- robots ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "headers"),
    [
        ("Réponse automatique : " + SUBJECT, {}),
        ("Absence du bureau", {}),
        ("Absent : Validation", {}),
        ("Absence", {}),
        ("Automatic reply: " + SUBJECT, {}),
        ("Out of Office: Validation", {}),
        ("AUTO: Alice Martin is out of the office", {}),
        (SUBJECT, {"Auto-Submitted": "auto-replied"}),
        (SUBJECT, {"X-Autoreply": "yes"}),
        (SUBJECT, {"X-Autorespond": "yes"}),
        (SUBJECT, {"Precedence": "auto_reply"}),
        (SUBJECT, {"Precedence": "bulk"}),
        (SUBJECT, {"List-Id": "<users.lists.example>"}),
        (SUBJECT, {"X-Auto-Response-Suppress": "All"}),
    ],
)
def test_out_of_office_and_robots_are_autoreplies(subject: str, headers: dict[str, str]) -> None:
    body = "Je suis absente jusqu'au 10 mars. I am out of the office.\n"
    parsed = mailparse.parse(mail(body, subject=subject, headers=headers))
    assert parsed.autoreply
    assert parsed.automatic
    assert parsed.bounce is None


@pytest.mark.parametrize(
    ("subject", "headers", "body"),
    [
        (SUBJECT, {"Auto-Submitted": "no"}, "ACCEPT"),
        ("Re: [CR-7K2QX9MD] Validation requested: contact change for vacation-rentals.fr", {}, ""),
        ("Re: [CR-1] Validation demandée : changement de contacts pour absence.fr", {}, "OK"),
        (SUBJECT, {}, "ACCEPT\n\nI will be out of the office next week."),
        (SUBJECT, {"X-Auto-Response-Suppress": "All"}, "ACCEPT, thanks."),
    ],
)
def test_people_are_not_taken_for_robots(subject: str, headers: dict[str, str], body: str) -> None:
    parsed = mailparse.parse(mail(body or "ACCEPT", subject=subject, headers=headers))
    assert not parsed.autoreply
    assert not parsed.automatic


def test_challenge_response_robots_are_autoreplies() -> None:
    body = "This account is protected by Bluebottle. Please click on the following link.\n"
    parsed = mailparse.parse(mail(body, subject="RE: Validation"))
    assert parsed.autoreply
    assert parsed.bounce is None


def test_a_message_without_sender_is_automatic() -> None:
    assert mailparse.parse(b"Subject: hi\r\n\r\nACCEPT\r\n").automatic


# -- bounces --------------------------------------------------------------------------------

VERP = "changes+bounce-4f2a9c@mailbot.example"
ORIGINAL_ID = "4f2a9c@mailbot.example"


def dsn(action: str = "failed", status: str = "5.1.1", *, headers_only: bool = False) -> bytes:
    """A Postfix-style RFC 3464 report on one of mailbot's VERP-addressed mails."""
    returned_type = "text/rfc822-headers" if headers_only else "message/rfc822"
    returned_body = "" if headers_only else f"\n{TOKEN_MAIL_EN}"
    return f"""Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mx.gone.example>
To: {VERP}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"
Message-Id: <20260302100001.ABC@mx.gone.example>

--BOUNDARY
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.gone.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<old@gone.example>: host mx.gone.example said: 550 {status} no such user

--BOUNDARY
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.gone.example
X-Postfix-Sender: rfc822; {VERP}
Arrival-Date: Mon,  2 Mar 2026 10:00:00 +0100 (CET)

Final-Recipient: rfc822; Old@Gone.example
Original-Recipient: rfc822;old@gone.example
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} no such user

--BOUNDARY
Content-Description: Undelivered Message
Content-Type: {returned_type}

Return-Path: <{VERP}>
From: mailbot <{BOT}>
To: old@gone.example
Subject: [CR-7K2QX9MD] Validation requested
Message-ID: <{ORIGINAL_ID}>
Auto-Submitted: auto-generated
{returned_body}
--BOUNDARY--
""".replace("\n", "\r\n").encode()


def test_a_dsn_for_a_verp_addressed_mail() -> None:
    parsed = mailparse.parse(dsn())
    bounce = parsed.bounce
    assert bounce is not None
    assert bounce.recipients == ("old@gone.example",)
    assert bounce.permanent
    assert not bounce.delayed
    assert bounce.standard
    assert bounce.status == ("5.1.1",)
    assert bounce.original_message_id == ORIGINAL_ID
    assert bounce.original_envelope_from == VERP
    assert bounce.original_sender == BOT
    assert parsed.automatic
    assert not parsed.autoreply
    assert parsed.forwarded is None
    assert mailparse.plus_key(VERP, "changes") == "bounce-4f2a9c"


def test_a_dsn_with_only_the_returned_headers() -> None:
    bounce = mailparse.parse(dsn(headers_only=True)).bounce
    assert bounce is not None
    assert bounce.original_message_id == ORIGINAL_ID


def test_a_delay_is_not_a_failure() -> None:
    bounce = mailparse.parse(dsn("delayed", "4.4.1")).bounce
    assert bounce is not None
    assert bounce.delayed
    assert not bounce.permanent
    assert bounce.recipients == ("old@gone.example",)


def test_a_successful_delivery_report_is_no_bounce_but_automatic() -> None:
    raw = dsn("delivered", "2.0.0").replace(b"Undelivered Mail Returned", b"Delivery report")
    parsed = mailparse.parse(raw)
    assert parsed.bounce is None
    assert parsed.automatic


def test_a_qmail_bounce_with_the_original_inline() -> None:
    body = (
        "Hi. This is the qmail-send program at mx.gone.example.\nI'm afraid I wasn't able to "
        "deliver your message to the following addresses.\nThis is a permanent error; I've "
        "given up. Sorry it didn't work out.\n\n<old@gone.example>:\nSorry, no mailbox here by "
        f"that name. (#5.1.1)\n\n--- Below this line is a copy of the message.\n\n"
        f"Return-Path: <{VERP}>\nMessage-ID: <{ORIGINAL_ID}>\nFrom: {BOT}\nSubject: x\n\nbody\n"
    )
    raw = mail(body, subject="failure notice", sender="MAILER-DAEMON@mx.gone.example")
    bounce = mailparse.parse(raw).bounce
    assert bounce is not None
    assert bounce.recipients == ("old@gone.example",)
    assert bounce.permanent
    assert bounce.original_message_id == ORIGINAL_ID
    assert bounce.original_envelope_from == VERP


def test_exim_failed_recipients_header() -> None:
    raw = mail(
        "A message that you sent could not be delivered to all of its recipients.\n",
        subject="Mail delivery failed: returning message to sender",
        sender="Mail Delivery System <Mailer-Daemon@mx.gone.example>",
        headers={"X-Failed-Recipients": "old@gone.example"},
    )
    bounce = mailparse.parse(raw).bounce
    assert bounce is not None
    assert bounce.recipients == ("old@gone.example",)


@pytest.mark.parametrize(
    ("subject", "sender", "body"),
    [
        ("Fwd: Undelivered Mail Returned to Sender", "alice@customer.example", "see below"),
        ("Re: Undeliverable: Validation", "alice@customer.example", "Delivery has failed?"),
        (SUBJECT, "alice@customer.example", "ACCEPT\n\nMy old address is undeliverable now."),
        ("Delivery status of my domain", "alice@customer.example", "ACCEPT"),
        (
            "Delivery failure on my domain",
            "alice@customer.example",
            "ACCEPT\n\n-----Original Message-----\nFrom: x@y.example\nSubject: Undeliverable\n"
            "Message-ID: <a@y.example>\n\nUser unknown: could not be delivered",
        ),
    ],
)
def test_people_talking_about_bounces_are_not_bounces(subject: str, sender: str, body: str) -> None:
    assert mailparse.parse(mail(body, subject=subject, sender=sender)).bounce is None


# -- limits --------------------------------------------------------------------------------


def multipart(parts: int) -> bytes:
    chunks = [b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"]
    chunks += [b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n"] * parts
    return b"".join(chunks) + b"--b--\r\n"


def test_parts_walked_are_bounded() -> None:
    message = mime.load(multipart(5_000))
    assert sum(1 for _ in mime.walk(message)) <= mime.MAX_PARTS
    assert mailparse.parse(multipart(5_000)).parse_error == ""


def test_nesting_is_bounded_even_past_the_recursion_limit() -> None:
    for depth in (30, 3_000):
        head = b"".join(
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
            for i in range(depth)
        )
        raw = b"From: a@example.org\r\n" + head + b"Content-Type: text/plain\r\n\r\nACCEPT\r\n"
        parsed = mailparse.parse(raw)
        assert parsed.parse_error == ""
        walked = mime.walk(mime.load(raw))
        assert max(d for _, d in walked) <= mime.MAX_DEPTH


def test_text_and_raw_size_are_capped() -> None:
    raw = mail("ACCEPT\n" + "x" * 100 + "\n" + ("word " * 20 + "\n") * 150_000)
    assert len(raw) > mime.MAX_RAW_BYTES
    parsed = mailparse.parse(raw)
    assert len(parsed.text) <= mime.MAX_TEXT_CHARS
    assert parsed.new_text.startswith("ACCEPT")


def test_huge_headers_are_capped() -> None:
    raw = b"From: a@example.org\r\n" + b"X-Junk: y\r\n" * 100_000 + b"Subject: s\r\n\r\nACCEPT\r\n"
    parsed = mailparse.parse(raw)
    assert parsed.sender == "a@example.org"
    assert parsed.parse_error == ""


# -- public API and purity ------------------------------------------------------------------


def test_message_id_and_references() -> None:
    raw = mail("ACCEPT", headers={"In-Reply-To": "<a@x>", "References": "<z@x> <a@x>"})
    parsed = mailparse.parse(raw)
    assert mailparse.message_id_of(raw) == parsed.message_id == "reply-1@customer.example"
    assert parsed.references == ("a@x", "z@x")
    assert parsed.recipients == (BOT,)


def test_plus_key() -> None:
    assert mailparse.plus_key("Changes+K3Y@mailbot.example", "changes") == "K3Y"
    assert mailparse.plus_key("other+K3Y@mailbot.example", "changes") is None


def test_every_parsing_module_is_pure() -> None:
    modules = sorted((Path(mailbot.__file__).parent / "mailparse").rglob("*.py"))
    assert len(modules) > 10
    for path in modules:
        names = imports_of(path)
        forbidden = {n for n in names if any(n == x or n.startswith(x + ".") for x in IO_LIBRARIES)}
        assert not forbidden, f"{path.name} imports {forbidden}"


# -- the shared corpus ------------------------------------------------------------------------


KNOWN_DISAGREEMENTS = {
    "alfonsrv-mail-parser-reply/reply/email_nl_1_2.txt": (
        "upstream keeps Outlook's '------------------------------' rule line at the end of "
        "the reply; it introduces the quoted header block (*Van:* ... *Onderwerp:*), so mailbot "
        "strips it with the quote: the words written are the same"
    ),
}


def corpus_cases() -> list[Any]:
    manifest = CORPUS / "manifest.tsv"
    if not manifest.is_file():
        return []
    cases: list[Any] = []
    for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
        path, _category, _client, _language, expected = line.split("\t")[:5]
        if expected == "-":
            continue
        marks = []
        if path in KNOWN_DISAGREEMENTS:
            marks.append(pytest.mark.xfail(reason=KNOWN_DISAGREEMENTS[path], strict=True))
        cases.append(pytest.param(path, expected, id=path, marks=marks))
    return cases


def corpus_message(path: str, expected: dict[str, Any]) -> bytes:
    data = (CORPUS / path).read_bytes()
    if not path.endswith((".txt", ".html")):
        return data
    subject = str(expected.get("input_subject", "Re: your message"))
    body = data.decode("utf-8", errors="replace")
    if path.endswith(".html"):
        return mail(html=body, subject=subject, sender="someone@example.org")
    return mail(body, subject=subject, sender="someone@example.org")


def same_text(found: str, wanted: str) -> bool:
    """Equal once trailing spaces and surrounding blank lines are ignored."""

    def norm(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip().splitlines())

    return norm(found) == norm(wanted)


def test_the_corpus_is_there() -> None:
    """Skips without the corpus, fails under CI=true: the cases below would be none."""
    require_corpus()
    assert corpus_cases()


@pytest.mark.parametrize(("path", "expected_file"), corpus_cases())
def test_corpus_message_is_understood(path: str, expected_file: str) -> None:
    expected: dict[str, Any] = json.loads((CORPUS / expected_file).read_text(encoding="utf-8"))
    parsed = mailparse.parse(corpus_message(path, expected))
    assert parsed.parse_error == ""
    check_reply(parsed, expected)
    check_forward(parsed, expected)
    check_robot(parsed, expected)
    check_bounce(parsed, expected)


def check_reply(parsed: mailparse.ParsedMail, expected: dict[str, Any]) -> None:
    if "reply_text" in expected:
        assert same_text(parsed.new_text, expected["reply_text"]), parsed.new_text
    if "reply_text_regex" in expected:
        assert re.search(expected["reply_text_regex"], parsed.new_text), parsed.new_text
    for wanted in expected.get("reply_text_contains", []):
        assert wanted in parsed.new_text
    for unwanted in expected.get("reply_text_not_contains", []):
        assert unwanted not in parsed.new_text
    if expected.get("reply_count", 1) > 1:
        assert parsed.new_text, "a reply above quoted matter"
        assert parsed.quoted_text, "a reply above quoted matter"


def check_forward(parsed: mailparse.ParsedMail, expected: dict[str, Any]) -> None:
    if "is_forwarded" not in expected:
        return
    forwarded = parsed.forwarded
    assert (forwarded is not None) == expected["is_forwarded"]
    if forwarded is None:
        return
    sender = expected.get("forwarded_from", {})
    if "address" in sender:
        assert forwarded.sender == sender["address"].lower()
    if "name" in sender:
        assert forwarded.sender_name == (sender["name"] or "")
    if "forwarded_subject" in expected:
        assert forwarded.subject == expected["forwarded_subject"]
    if "forwarded_body" in expected:
        assert same_text(forwarded.text, expected["forwarded_body"]), forwarded.text
    if "forward_message" in expected:
        assert same_text(parsed.forwarder_note, expected["forward_message"] or "")


def check_robot(parsed: mailparse.ParsedMail, expected: dict[str, Any]) -> None:
    if "is_autoreply" in expected:
        assert parsed.autoreply == expected["is_autoreply"]
        assert parsed.automatic or not expected["is_autoreply"]


def check_bounce(parsed: mailparse.ParsedMail, expected: dict[str, Any]) -> None:
    if "is_bounce" not in expected:
        return
    bounce = parsed.bounce
    assert (bounce is not None) == expected["is_bounce"]
    if bounce is None:
        return
    assert parsed.automatic
    if "bounced_recipients" in expected:
        assert set(bounce.recipients) == {a.lower() for a in expected["bounced_recipients"]}
    if "status" in expected:
        assert expected["status"] in bounce.status
    kind = expected.get("bounce_kind", "")
    if kind.startswith("temporary"):
        assert bounce.delayed
        assert not bounce.permanent
    elif kind == "permanent":
        assert bounce.permanent
        assert not bounce.delayed
    if expected.get("bounce_type") == "hard":
        assert bounce.status[0].startswith("5")
    elif expected.get("bounce_type") == "soft":
        assert bounce.status[0].startswith("4")
