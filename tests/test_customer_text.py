"""What customers read: mail sent in, and the text of the mail they get back,
in English and French.

Whoever cancels is told it is done; an operator's action from the CLI is the
support's, never a pseudo-address; a contact's good standing is told to that
contact alone; an error mail in French carries no English; a new contact reads
the requester's language; CHANGE without role lines says what is missing.
"""

from __future__ import annotations

import email
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings
from factories import (
    ALICE,
    BILL,
    BOB,
    CAROL,
    DAVE,
    WORLD,
    MailFactory,
    Sent,
    dmarc,
    send,
    token_in,
)

from mailbot.cli import main
from mailbot.clock import FixedClock
from mailbot.service import Mailbot

pytestmark = pytest.mark.usefixtures("world")
OPS = "ops@agency.test"  # an operator in the test settings, not a contact
NEWBIE = "newbie@new.test"  # an address no one has named yet
HOUR = timedelta(hours=1, minutes=1)


def said(mail: Sent) -> str:
    """The plain text of a mail, its lines joined (wrapping does not split phrases)."""
    return " ".join(mail.text.split())


def html_said(mail: Sent) -> str:
    """The words of a mail's HTML part."""
    return " ".join(re.sub(r"<[^>]+>", " ", mail.html).replace("&nbsp;", " ").split())


def to(mails: list[Sent], address: str, event: str | None = None) -> Sent:
    (found,) = [m for m in mails if m.to == address and (event is None or m.event == event)]
    return found


def open_tech_change(bot: Mailbot, mail: MailFactory, sender: str = ALICE) -> str:
    mails = send(bot, mail(sender, "CHANGE example.com", f"tech: {CAROL}"))
    request_id = mails[0].row.request_id
    assert request_id
    return request_id


# -- whoever cancels is told it is done -----------------------------------------


def test_whoever_cancels_by_mail_reads_that_it_is_done(bot: Mailbot, mail: MailFactory) -> None:
    request_id = open_tech_change(bot, mail)
    mails = send(bot, mail(ALICE, f"ANNULER {request_id}", headers=dmarc(ALICE)))
    mine = to(mails, ALICE, "request-cancelled")
    assert mine.header("Content-Language") == "fr"
    assert "Annulation confirmée" in str(mine.header("Subject"))
    assert "Votre annulation a bien été prise en compte" in said(mine)
    assert f"la demande {request_id}" in said(mine)
    assert "Votre annulation a bien été prise en compte" in html_said(mine)
    carol = to(mails, CAROL, "request-cancelled")
    assert "withdrawn by Alice Martin <alice@example.com>" in said(carol)
    # Bob hands his own role over: Alice, the admin, neither asked nor validates.
    request_id = open_tech_change(bot, mail, sender=BOB)
    mails = send(bot, mail(ALICE, f"CANCEL {request_id}", headers=dmarc(ALICE)))
    assert sorted((m.event, m.to) for m in mails) == [
        ("request-cancelled", ALICE),
        ("request-cancelled", BOB),
        ("request-cancelled", CAROL),
    ]
    assert "Votre annulation a bien été prise en compte" in said(to(mails, ALICE))
    assert "withdrawn by Alice Martin <alice@example.com>" in said(to(mails, BOB))
    # Without authentication, CANCEL waits for its confirmation: the CONFIRM that
    # carries it out brings the canceller's own mail.
    request_id = open_tech_change(bot, mail)
    (ask,) = send(bot, mail(ALICE, f"ANNULER {request_id}"))
    assert ask.event == "confirmation-requested"
    mails = send(bot, mail(ALICE, "x", f"CONFIRMER {token_in(ask)}"))
    assert "Votre annulation a bien été prise en compte" in said(to(mails, ALICE))


def test_an_operator_who_cancels_by_mail_is_told_and_customers_read_the_support(
    bot: Mailbot, mail: MailFactory
) -> None:
    request_id = open_tech_change(bot, mail)
    mails = send(bot, mail(OPS, f"ANNULER {request_id}", headers=dmarc(OPS)))
    ops = to(mails, OPS, "request-cancelled")
    assert ops.header("Content-Language") == "fr"  # an operator's French command
    assert "Votre annulation a bien été prise en compte" in said(ops)
    for customer, words in (
        (ALICE, "retirée par le support de mailbot"),
        (CAROL, "withdrawn by the support team of mailbot"),
    ):
        text = said(to(mails, customer, "request-cancelled"))
        assert words in text
        assert OPS not in text


# -- an operator from the CLI is the support ------------------------------------


def cli(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def maildir(root: Path) -> list[EmailMessage]:
    new = root / "new"
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for p in sorted(new.iterdir(), key=lambda p: p.name)
    ]


def body(message: EmailMessage, kind: str) -> str:
    part = message.get_body((kind,))
    assert part is not None
    return str(part.get_content())


def test_an_operators_cancel_and_resend_from_the_cli_name_the_support(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cli.toml"
    sent = tmp_path / "cli-sent"
    config.write_text(
        '[bot]\naddress = "changes@bot.test"\nbase_url = "https://bot.test"\n'
        'name = "Registrar Example"\n'
        f'[database]\nurl = "{database_url}"\n[outgoing]\nmaildir = "{sent}"\n'
    )
    world = tmp_path / "world.json"
    world.write_text(json.dumps(WORLD))
    request = tmp_path / "in.eml"
    request.write_bytes(MailFactory()(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    assert cli(config, "init") == 0
    assert cli(config, "import", str(world)) == 0
    assert cli(config, "process", str(request)) == 0
    assert cli(config, "outbox", "flush") == 0
    seen = len(maildir(sent))
    capsys.readouterr()
    assert cli(config, "requests", "list", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert cli(config, "requests", "resend", listed["id"]) == 0
    assert cli(config, "requests", "cancel", listed["id"]) == 0
    assert cli(config, "outbox", "flush") == 0
    mails = maildir(sent)[seen:]
    assert (
        sorted(str(m["X-Mailbot-Event"]) for m in mails)
        == ["request-cancelled"] * 2 + ["validation-requested"] * 2
    )
    for message in mails:
        assert "operator@cli" not in body(message, "plain") + body(message, "html")
    cancelled = {
        str(m["To"].addresses[0].addr_spec): m for m in mails if "cancelled" in m["X-Mailbot-Event"]
    }
    alice = " ".join(body(cancelled[ALICE], "plain").split())
    carol = " ".join(body(cancelled[CAROL], "plain").split())
    assert "retirée par le support de Registrar Example" in alice
    assert "withdrawn by the support team of Registrar Example" in carol


# -- good standing is the business of the account it concerns --------------------


def test_a_contact_not_in_good_standing_is_told_why_and_the_requester_is_not(
    bot: Mailbot, mail: MailFactory
) -> None:
    mails = send(bot, mail(ALICE, "CHANGER example.com", f"technique: {DAVE}"))
    error = to(mails, ALICE)
    assert error.header("X-Mailbot-Error") == "not-in-good-standing"
    text = said(error)
    assert f"{DAVE} ne peut pas prendre le rôle de contact technique pour le moment" in text
    assert "lui a indiqué pourquoi" in text
    for private in ("règlement", "factur", "paiement", "impayé"):
        assert private not in text.lower()
        assert private not in html_said(error).lower()
    notice = to(mails, DAVE)
    assert notice.event == "good-standing-required"
    assert notice.header("X-Mailbot-Event") == "good-standing-required"
    assert notice.header("Content-Language") == "en"  # Dave's own language
    text = said(notice)
    assert "example.com that names you as technical contact" in text
    assert "your account is not up to date with payments" in text
    assert "What to do: settle the outstanding invoices of your account" in text
    assert "your account is not up to date with payments" in html_said(notice)
    # A new address is in good standing: naming it never mails such a notice.
    mails = send(bot, mail(ALICE, "CHANGE example.com", f"tech: {NEWBIE}"))
    assert "good-standing-required" not in [m.event for m in mails]


def test_the_private_notice_keeps_to_the_daily_limit(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    """Anyone who may open requests could name a contact over and over: the
    contact hears of it at most ``max_unsolicited_per_day`` times a day."""
    cap = bot.settings.policy.max_unsolicited_per_day
    notices = 0
    for _ in range(cap + 2):
        clock.at += HOUR  # the requester's own answer limit is hourly
        mails = send(bot, mail(ALICE, "CHANGE example.com", f"billing: {DAVE}"))
        assert to(mails, ALICE).header("X-Mailbot-Error") == "not-in-good-standing"
        notices += len([m for m in mails if m.to == DAVE])
    assert notices == cap
    clock.at += timedelta(days=1)
    again = send(bot, mail(ALICE, "CHANGE example.com", f"billing: {DAVE}"))
    assert sorted(m.to for m in again) == [ALICE, DAVE]  # a day later, told again


def test_a_service_not_in_good_standing_is_its_admins_business(
    bot: Mailbot, mail: MailFactory
) -> None:
    # Alice, the admin, reads it plainly: the account is her own.
    mails = send(bot, mail(ALICE, "CHANGER unpaid.example", f"technique: {CAROL}"))
    (error,) = mails
    assert "Le compte de unpaid.example n'est pas à jour de ses règlements" in said(error)
    # Bob, its tech contact, hands his role over: he only reads that it cannot be
    # changed now, and Alice is told why, in French.
    mails = send(bot, mail(BOB, "CHANGE unpaid.example", f"tech: {CAROL}"))
    error = to(mails, BOB)
    assert error.header("X-Mailbot-Error") == "not-in-good-standing"
    assert "The contacts of unpaid.example cannot be changed at the moment" in said(error)
    assert "payment" not in said(error)
    assert "invoice" not in said(error)
    notice = to(mails, ALICE)
    assert notice.event == "good-standing-required"
    assert "le compte de unpaid.example n'est pas à jour de ses règlements" in said(notice)
    assert "Que faire ? Réglez les factures en attente du service" in said(notice)
    # An operator is the registrar's support: they read the reason, and tell the customer.
    (error,) = send(bot, mail(OPS, "CHANGE example.com", f"tech: {DAVE}"))
    assert f"The account of the contact {DAVE} is not up to date with payments" in said(error)


# -- French error mails carry no English -----------------------------------------

ENGLISH = re.compile(
    r"\b(the|this|that|is|are|was|not|no|your|you|write|reply|request|already|among|yours"
    r"|looks|like|several|one|replaced|newer|latest|enough|here|expired|resent|less|than"
    r"|hour|send|again|from|address|sent|used|such|email|without)\b",
    re.IGNORECASE,
)
"""English words, those of the details the core gives among them."""
WHAT_TO_DO = re.compile(
    r"\b(Écrivez|écrivez|Répondez|répondez|Envoyez|envoyez|Renvoyez|renvoyez|Vérifiez|Attendez"
    r"|Réglez|Demandez|indiquez|désignez|recopiez)\b"
)


def french_errors(bot: Mailbot, mail: MailFactory, clock: FixedClock) -> dict[str, list[Sent]]:
    """Every error Alice (French) can cause by mail, by the case that caused it."""
    errors: dict[str, list[Sent]] = {}

    def case(
        name: str, sender: str, subject: str, text: str = "", later: bool = True, **kw: Any
    ) -> list[Sent]:
        if later:
            clock.at += HOUR  # answers and wrong tokens are limited per hour
        mails = send(bot, mail(sender, subject, text, **kw))
        errors[name] = [m for m in mails if m.event == "error" and m.to == ALICE]
        return mails

    case("unknown-command", ALICE, "Bonjour", "Pouvons-nous parler de la facture ?")
    case("no role line", ALICE, "CHANGER example.com", "merci")
    case("no service", ALICE, "CHANGER", "technique: carol@agency.test")
    case("service words", ALICE, "CHANGER example.com svp", "technique: carol@agency.test")
    case("unknown role", ALICE, "CHANGER example.com", "propriétaire: carol@agency.test")
    case("role twice", ALICE, "CHANGER example.com", f"technique: {CAROL}\ntechnique: {BOB}")
    case("no one contact", ALICE, "CHANGER example.com", "technique: pas une adresse@")
    case("request id", ALICE, "STATUT 1234")
    case("unknown-service", ALICE, "CHANGER nosuch.example", f"technique: {CAROL}")
    case("unknown-contact", ALICE, "CHANGER example.com", "technique: XX999-MB")
    case("not-authorized", ALICE, "STATUT CR-00000000")
    case("not-in-good-standing", ALICE, "CHANGER example.com", f"technique: {DAVE}")
    case("no-change", ALICE, "CHANGER example.com", "technique: BB200-MB")
    case("bad-token", ALICE, "x", "ACCEPTER 7KQ2-X9JM-4TRD-8WPA-3HNB")
    case("no token", ALICE, "x", "ACCEPTER")
    case("ambiguous-decision", ALICE, "ACCEPTER", "REFUSER")
    case("unknown confirmation", ALICE, "x", "CONFIRMER 7KQ2-X9JM-4TRD-8WPA-3HNB")
    opened = case("opened", ALICE, "CHANGER example.com", f"technique: {CAROL}")
    request_id = opened[0].row.request_id
    tokens = {m.to: token_in(m) for m in opened if m.event == "validation-requested"}
    case("duplicate-request", ALICE, "CHANGER example.com", f"technique: {BILL}")
    resent = case("resent", ALICE, f"RENVOYER {request_id}", headers=dmarc(ALICE))
    fresh = token_in(to(resent, ALICE))
    resend = f"RENVOYER {request_id}"
    case("too-many-attempts (resends)", ALICE, resend, later=False, headers=dmarc(ALICE))
    case("token replaced", ALICE, "x", f"ACCEPTER {tokens[ALICE]}")
    case("accepted", ALICE, "x", f"ACCEPTER {fresh}")
    case("token-used", ALICE, "x", f"ACCEPTER {fresh}")
    clock.at += HOUR
    for _ in range(bot.settings.policy.max_bad_tokens_per_hour):
        send(bot, mail(ALICE, "x", "ACCEPTER 7KQ2-X9JM-4TRD-8WPA-3HNC"))
    errors["too-many-attempts (tokens)"] = [
        m for m in send(bot, mail(ALICE, "x", "ACCEPTER 7KQ2-X9JM-4TRD-8WPA-3HND")) if m.to == ALICE
    ]
    thread = to(resent, CAROL).header("Message-ID")
    case("validation address", ALICE, "Re: validation", "ACCEPTER", in_reply_to=thread)
    (ask,) = case("asked", ALICE, resend)  # unauthenticated: the sender confirms first
    case("confirmed", ALICE, "x", f"CONFIRMER {token_in(ask)}")
    case("confirmation used", ALICE, "x", f"CONFIRMER {token_in(ask)}")
    (ask,) = case("asked again", ALICE, resend)
    clock.at += timedelta(days=3)
    case("confirmation expired", ALICE, "x", f"CONFIRMER {token_in(ask)}")
    case("cancelled", ALICE, f"ANNULER {request_id}", headers=dmarc(ALICE))
    case("request-closed", ALICE, f"ANNULER {request_id}", headers=dmarc(ALICE))
    done = ("opened", "resent", "accepted", "asked", "confirmed", "asked again", "cancelled")
    return {name: mails for name, mails in errors.items() if name not in done}


def test_french_error_mails_carry_no_english_and_say_what_to_do(
    bot: Mailbot, mail: MailFactory, clock: FixedClock
) -> None:
    errors = french_errors(bot, mail, clock)
    codes = set()
    for name, mails in errors.items():
        assert len(mails) == 1, name
        (error,) = mails
        codes.add(error.header("X-Mailbot-Error"))
        assert error.header("Content-Language") == "fr", name
        for text in (said(error), html_said(error)):
            # Addresses and the pinned error code are no prose.
            code = str(error.header("X-Mailbot-Error"))
            shown = text.replace(ALICE, "").replace("changes@bot.test", "").replace(code, "")
            assert not ENGLISH.findall(shown), (name, ENGLISH.findall(shown), text)
            assert WHAT_TO_DO.search(text), (name, text)
    assert codes == {
        "unknown-command",
        "malformed-request",
        "unknown-service",
        "unknown-contact",
        "not-authorized",
        "not-in-good-standing",
        "no-change",
        "duplicate-request",
        "bad-token",
        "token-used",
        "request-closed",
        "ambiguous-decision",
        "too-many-attempts",
    }


def test_an_error_names_what_went_wrong_in_the_mails_language(
    bot: Mailbot, mail: MailFactory
) -> None:
    (french,) = send(bot, mail(ALICE, "STATUT 1234"))
    assert "Cette commande attend un numéro de demande, comme CR-7K2QX9MD" in said(french)
    (english,) = send(bot, mail(BOB, "STATUS 1234"))
    assert "This command needs a request id, like CR-7K2QX9MD" in said(english)
    assert "could not be read" not in said(english)  # it is no change request


# -- CHANGE without role lines says what is missing ---------------------------------


def test_change_without_role_lines_says_that_none_was_given(
    bot: Mailbot, mail: MailFactory
) -> None:
    for sender, subject, missing, form in (
        (
            ALICE,
            "CHANGER example.com",
            "Elle n'indique aucun rôle à changer",
            "administrateur: <identifiant ou e-mail>",
        ),
        (BOB, "CHANGE example.com", "It names no role to change", "admin: <handle or email>"),
    ):
        (error,) = send(bot, mail(sender, subject, "Merci / thanks"))
        assert error.header("X-Mailbot-Error") == "malformed-request"
        text = said(error)
        assert missing in text
        assert form in text
        assert form.replace("<", "&lt;").replace(">", "&gt;") in error.html
        for roles in (("administrateur", "technique", "facturation"), ("admin", "tech", "billing")):
            assert all(role in text for role in roles)
        assert "n'a pas été comprise" not in text
        assert "was not understood" not in text


# -- a new contact reads the requester's language -----------------------------------


def test_a_new_contact_reads_the_requesters_language(bot: Mailbot, mail: MailFactory) -> None:
    for sender, request, newcomer, language, words in (
        (BOB, "CHANGE example.com", "new-en@new.test", "en", "Validation requested"),
        (ALICE, "CHANGER example.com", "new-fr@new.test", "fr", "Validation demandée"),
        # An operator who is no contact: the language of the command.
        (OPS, "CHANGER example.com", "new-ops@new.test", "fr", "Validation demandée"),
    ):
        role = {BOB: "tech", ALICE: "billing", OPS: "admin"}[sender]
        mails = send(bot, mail(sender, request, f"{role}: {newcomer}", headers=dmarc(sender)))
        asked = to(mails, newcomer, "validation-requested")
        assert asked.header("Content-Language") == language, sender
        assert words in str(asked.header("Subject"))


@pytest.fixture
def french_bot(tmp_path: Path, database_url: str, clock: FixedClock) -> Iterator[Mailbot]:
    """The standard world, on a bot whose default language is French."""
    settings = make_settings(tmp_path, database_url, bot={"language": "fr"})
    french = Mailbot.from_settings(settings, clock)
    yield french
    french.engine.dispose()


def test_without_a_known_language_the_bots_default_is_used(
    french_bot: Mailbot, mail: MailFactory
) -> None:
    """An operator who is no contact writes in English to a bot whose default is
    French: the new contact reads the bot's default."""
    mails = send(french_bot, mail(OPS, "CHANGE example.com", f"tech: {NEWBIE}"))
    assert to(mails, NEWBIE, "validation-requested").header("Content-Language") == "fr"
