"""The link page over real HTTP: a uvicorn server in a thread, httpx as the browser.

Requests are opened by mail and links taken from the queued validation mails,
so the page is tested with the tokens people really get. Forms are read from
the HTML and submitted as a browser would: with a person's choice, or, like a
link scanner, untouched. A decision made on the page is held for
``[web] undo_minutes``: tests move the clock and run the sweep to apply it.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from conftest import START
from factories import (
    ALICE,
    BOB,
    CAROL,
    MailFactory,
    Sent,
    last_outbox_id,
    outbox,
    request_state,
)
from starlette.requests import Request
from webserver import running

from mailbot import tokens
from mailbot.adapters.web import client_of, create_app
from mailbot.clock import FixedClock
from mailbot.config import Settings
from mailbot.outgoing.outbox import CommitPoint
from mailbot.service import Mailbot
from mailbot.storage import queries
from mailbot.storage.engine import transaction

MAILBOT = Path(sys.executable).parent / "mailbot"
WINDOW = timedelta(minutes=10)
"""The default ``[web] undo_minutes``."""

# -- helpers ----------------------------------------------------------------------


class PageReader(HTMLParser):
    """Reads a page like a browser: its visible text and its forms' fields."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.forms: list[dict[str, Any]] = []
        self.scripts = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in ("style", "title"):
            self._skip += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append({"action": values.get("action", ""), "controls": []})
        elif tag in ("input", "button") and self.forms:
            kind = values.get("type", "text" if tag == "input" else "submit").lower()
            self.forms[-1]["controls"].append(
                {
                    "tag": tag,
                    "type": kind,
                    "name": values.get("name"),
                    "value": values.get("value", "on" if kind in ("radio", "checkbox") else ""),
                    "checked": "checked" in values,
                }
            )

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def read(html: str) -> PageReader:
    reader = PageReader()
    reader.feed(html)
    reader.close()
    return reader


def text_of(response: httpx.Response) -> str:
    """The page's visible text, whitespace collapsed."""
    return " ".join(" ".join(read(response.text).text).split())


def untouched(form: dict[str, Any]) -> list[tuple[str, str]]:
    """What a browser sends for ``form`` when no one touches it (implicit submission).

    Hidden and text inputs with their values, checked radio buttons and boxes,
    and the first submit button's name and value when it has a name: exactly
    what a link scanner that "submits every form" sends.
    """
    fields = []
    for control in form["controls"]:
        name, kind = control["name"], control["type"]
        if not name or kind in ("submit", "button", "reset", "image"):
            continue
        if kind in ("radio", "checkbox") and not control["checked"]:
            continue
        fields.append((name, control["value"]))
    buttons = [c for c in form["controls"] if c["type"] == "submit"]
    if buttons and buttons[0]["name"]:
        fields.append((buttons[0]["name"], buttons[0]["value"]))
    return fields


def submit(
    client: httpx.Client,
    form: dict[str, Any],
    fields: list[tuple[str, str]],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST ``fields`` to the form's action, url-encoded as a browser does, in order."""
    return client.post(
        form["action"],
        content=urlencode(fields),
        headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
    )


def the_form(response: httpx.Response) -> dict[str, Any]:
    """The page's one form."""
    forms = read(response.text).forms
    assert len(forms) == 1, forms
    return forms[0]


def choices(form: dict[str, Any], name: str) -> list[str]:
    """The values a person can pick for the radio group ``name``."""
    return [c["value"] for c in form["controls"] if c["type"] == "radio" and c["name"] == name]


def form_for(response: httpx.Response, decision: str) -> tuple[str, dict[str, str]]:
    """The action and fields sent when a person picks ``decision`` and submits."""
    form = the_form(response)
    assert decision in choices(form, "decision"), form
    return form["action"], {**dict(untouched(form)), "decision": decision}


def open_tech_change(bot: Mailbot, mail: MailFactory) -> tuple[str, dict[str, str]]:
    """Alice makes Carol the tech contact; returns the request id and each link's path."""
    before = last_outbox_id(bot)
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    mails = outbox(bot, after=before)
    request_id = mails[0].row.request_id
    assert request_id
    links = {}
    for sent in mails:
        if sent.event == "validation-requested":
            found = re.search(r"https://bot\.test(/v/[0-9A-Z]+)", sent.text)
            assert found, sent.text
            links[sent.to] = found.group(1)
    assert set(links) == {ALICE, CAROL}
    return request_id, links


def answer(client: httpx.Client, link: str, decision: str) -> httpx.Response:
    """Load the page, then press the button for ``decision``."""
    page = client.get(link)
    assert page.status_code == 200, page.text
    action, fields = form_for(page, decision)
    return client.post(action, data=fields)


def undo_link_in(sent: Sent) -> str:
    """The path of the undo link in a decision-held mail."""
    found = re.search(r"https://bot\.test(/u/[0-9A-Z]+)", sent.text)
    assert found, sent.text
    return found.group(1)


def held_mail(bot: Mailbot, after: int, to: str) -> Sent:
    """The one mail queued since ``after``: the decision-held mail to ``to``."""
    mails = outbox(bot, after=after)
    assert [(m.event, m.to) for m in mails] == [("decision-held", to)]
    return mails[0]


def validation(state: dict[str, Any], email: str) -> dict[str, Any]:
    return next(v for v in state["validations"] if v["email"] == email)


@contextmanager
def nothing_recorded(bot: Mailbot, request_id: str) -> Iterator[None]:
    """The block leaves the request's state and the outbox as they were."""
    mails, state = last_outbox_id(bot), request_state(bot, request_id)
    yield
    assert request_state(bot, request_id) == state
    assert last_outbox_id(bot) == mails


def assert_clean_page(response: httpx.Response, status: int) -> None:
    """An HTML page with our headers, no script and no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert_security_headers(response)
    assert read(response.text).scripts == 0
    assert "Traceback" not in response.text
    assert "<script" not in response.text.lower()


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"


@pytest.fixture
def client(bot: Mailbot, world: dict[str, Any]) -> Iterator[httpx.Client]:
    """An HTTP client talking to the link page of ``bot`` (standard world) served by uvicorn."""
    with running(create_app(bot)) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield http


# -- the page ---------------------------------------------------------------------


def test_the_page_shows_the_request_and_changes_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before_mails, before = last_outbox_id(bot), request_state(bot, request_id)

    for _ in range(2):  # a mail scanner, then the person
        page = client.get(links[CAROL])
        assert_clean_page(page, 200)
    assert client.head(links[CAROL]).status_code == 200

    text = text_of(page)
    assert "example.com" in text
    assert request_id in text
    assert "technical contact" in text
    assert BOB in text  # from
    assert CAROL in text  # to, and asked
    assert ALICE in text  # asked too
    assert "no answer yet" in text
    assert "takes effect 10 minutes later" in text
    assert '<html lang="en">' in page.text
    # One form: a choice of two, neither made, and a button that carries nothing.
    form = the_form(page)
    assert choices(form, "decision") == ["accept", "refuse"]
    assert not any(c["checked"] for c in form["controls"])
    assert [c["name"] for c in form["controls"] if c["type"] == "submit"] == [None]
    assert [name for name, _ in untouched(form)] == ["nonce"]
    # The token appears in the form's action only.
    token = links[CAROL].removeprefix("/v/")
    assert page.text.count(token) == 1
    assert tokens.group(token) not in page.text

    assert last_outbox_id(bot) == before_mails
    assert request_state(bot, request_id) == before
    assert {v["status"] for v in before["validations"]} == {"pending"}


def test_the_page_speaks_the_contacts_language(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    _, links = open_tech_change(bot, mail)
    page = client.get(links[ALICE])  # Alice's contact language is French
    assert_clean_page(page, 200)
    assert '<html lang="fr">' in page.text
    text = text_of(page)
    assert "Changement de contacts pour example.com" in text
    assert "contact technique" in text
    assert "Accepter le changement" in text
    assert "Refuser le changement" in text
    assert "Envoyer ma réponse" in text
    assert "vous" in text


def test_a_typed_variant_of_the_token_opens_the_same_page(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    _, links = open_tech_change(bot, mail)
    token = links[CAROL].removeprefix("/v/")
    page = client.get(f"/v/{tokens.group(token).lower()}")
    assert_clean_page(page, 200)
    action, _ = form_for(page, "accept")
    assert action == links[CAROL]  # the form posts to the canonical link


# -- deciding: held, mailed, then applied -----------------------------------------


def test_accepting_is_held_mailed_with_an_undo_link_then_applied_once(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, clock: FixedClock
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)

    result = answer(client, links[CAROL], "accept")

    assert_clean_page(result, 200)
    text = text_of(result)
    assert "Your acceptance is recorded" in text
    assert "It takes effect on 2026-03-02 09:10 UTC" in text
    assert "undo link" in text
    carol = validation(request_state(bot, request_id), CAROL)
    assert (carol["status"], carol["held"]) == ("pending", "accept")
    assert carol["held_until"] == (START + WINDOW).isoformat()
    # The contact is told by mail what was recorded, when it counts, and how to undo it.
    told = held_mail(bot, before, CAROL)
    assert "ACCEPT the change of contacts for example.com" in told.text
    assert "takes effect on 2026-03-02 09:10 UTC, in 10 minutes" in told.text
    assert undo_link_in(told).startswith("/u/")
    assert "09:10" in (told.header("Subject") or "")

    # Not before the window has passed...
    assert bot.sweep(now=START + WINDOW - timedelta(seconds=1)).applied == 0
    assert validation(request_state(bot, request_id), CAROL)["status"] == "pending"
    assert last_outbox_id(bot) == told.row.id
    # ...then once, through the ordinary decision.
    assert bot.sweep(now=START + WINDOW).applied == 1
    assert bot.sweep(now=START + WINDOW + timedelta(minutes=5)).applied == 0
    state = request_state(bot, request_id)
    carol = validation(state, CAROL)
    assert (carol["status"], carol["channel"], carol["held"]) == ("accepted", "web", None)
    assert carol["decided_at"] == (START + WINDOW).isoformat()
    assert state["status"] == "pending"  # Alice is still awaited
    assert [(m.event, m.to) for m in outbox(bot, after=told.row.id)] == [
        ("validation-recorded", CAROL)
    ]
    kinds = [e["kind"] for e in state["events"]]
    assert kinds.count("decision-held") == 1
    assert kinds.count("validation-accepted") == 1


def test_the_last_held_acceptance_makes_the_change_effective(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)

    first = answer(client, links[ALICE], "accept")  # French
    assert_clean_page(first, 200)
    assert "Votre acceptation est enregistrée" in text_of(first)
    assert "prend effet le 2026-03-02 09:10 UTC" in text_of(first)
    last = answer(client, links[CAROL], "accept")
    assert_clean_page(last, 200)
    assert request_state(bot, request_id)["status"] == "pending"

    before = last_outbox_id(bot)
    assert bot.sweep(now=START + WINDOW).applied == 2
    state = request_state(bot, request_id)
    assert state["status"] == "done"
    assert {v["channel"] for v in state["validations"]} == {"web"}
    with transaction(bot.engine) as session:
        row = queries.service_row(session, "example.com")
        assert row is not None
        assert queries.service(session, row).holders[queries.Role.TECH].email == CAROL
    assert "request-done" in {m.event for m in outbox(bot, after=before)}
    after_done = client.get(links[CAROL])
    assert_clean_page(after_done, 410)
    assert "The change is now effective" in text_of(after_done)


def test_a_held_refusal_refuses_the_whole_request_after_the_window(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)

    result = answer(client, links[CAROL], "refuse")

    assert_clean_page(result, 200)
    assert "Your refusal is recorded" in text_of(result)
    assert "refuses the whole request" in text_of(result)
    told = held_mail(bot, before, CAROL)
    assert "REFUSE the change of contacts for example.com" in told.text
    assert "A refusal refuses the whole request" in told.text
    assert request_state(bot, request_id)["status"] == "pending"
    assert_clean_page(client.get(links[ALICE]), 200)  # still open meanwhile

    bot.sweep(now=START + WINDOW)
    state = request_state(bot, request_id)
    assert state["status"] == "refused"
    assert (validation(state, CAROL)["status"], validation(state, CAROL)["channel"]) == (
        "refused",
        "web",
    )
    closed = client.get(links[ALICE])
    assert_clean_page(closed, 410)
    assert "Cette demande est close" in text_of(closed)
    assert "refusée" in text_of(closed)
    assert not read(closed.text).forms


def test_while_held_the_page_says_so_and_another_post_changes_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    page = client.get(links[CAROL])
    action, fields = form_for(page, "accept")
    assert client.post(action, data=fields).status_code == 200
    with nothing_recorded(bot, request_id):
        again = client.get(links[CAROL])
        assert_clean_page(again, 200)
        assert "Your acceptance is recorded" in text_of(again)
        assert "acceptance taking effect on 2026-03-02 09:10 UTC" in text_of(again)
        assert not read(again.text).forms
        for decision in ("accept", "refuse"):  # the old form, submitted again
            resubmitted = client.post(action, data={**fields, "decision": decision})
            assert_clean_page(resubmitted, 200)
            assert "Your acceptance is recorded" in text_of(resubmitted)


def test_a_used_token_gets_410_on_get_and_post_once_applied(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    page = client.get(links[CAROL])
    action, fields = form_for(page, "accept")
    assert client.post(action, data=fields).status_code == 200
    bot.sweep(now=START + WINDOW)
    with nothing_recorded(bot, request_id):
        again = client.get(links[CAROL])
        assert_clean_page(again, 410)
        assert "You have already answered" in text_of(again)
        assert "accepted on the web page" in text_of(again)
        assert not read(again.text).forms
        for decision in ("accept", "refuse"):
            resubmitted = client.post(action, data={**fields, "decision": decision})
            assert_clean_page(resubmitted, 410)


# -- undo -------------------------------------------------------------------------


def test_undo_within_the_window_restores_pending_and_the_link_answers_again(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, clock: FixedClock
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    undo = undo_link_in(held_mail(bot, before, CAROL))
    clock.at += timedelta(minutes=9)
    held_state, held_mails = request_state(bot, request_id), last_outbox_id(bot)

    shown = client.get(undo)  # opening the link (or a scanner) undoes nothing
    assert_clean_page(shown, 200)
    assert "Undo your answer" in text_of(shown)
    assert "takes effect on 2026-03-02 09:10 UTC" in text_of(shown)
    assert client.head(undo).status_code == 200
    form = the_form(shown)
    assert undo.removeprefix("/u/") not in str(untouched(form))
    unticked = client.post(form["action"], data=dict(untouched(form)))
    assert_clean_page(unticked, 422)
    assert "tick the box" in text_of(unticked)
    assert request_state(bot, request_id) == held_state

    ticked = client.post(form["action"], data={**dict(untouched(form)), "confirm": "undo"})

    assert_clean_page(ticked, 200)
    assert "Your answer is withdrawn" in text_of(ticked)
    carol = validation(request_state(bot, request_id), CAROL)
    assert (carol["status"], carol["held"], carol["held_until"]) == ("pending", None, None)
    assert last_outbox_id(bot) == held_mails
    # The undo link is spent; the window passing applies nothing.
    used = client.get(undo)
    assert_clean_page(used, 410)
    assert "Nothing to undo" in text_of(used)
    assert_clean_page(
        client.post(form["action"], data={**dict(untouched(form)), "confirm": "undo"}), 410
    )
    assert bot.sweep(now=START + timedelta(hours=1)).applied == 0
    assert validation(request_state(bot, request_id), CAROL)["status"] == "pending"
    assert last_outbox_id(bot) == held_mails

    # The validation link works again: a new choice, a new undo link, the old one dead.
    again = answer(client, links[CAROL], "refuse")
    assert "Your refusal is recorded" in text_of(again)
    new_undo = undo_link_in(held_mail(bot, held_mails, CAROL))
    assert new_undo != undo
    assert_clean_page(client.get(undo), 404)
    assert_clean_page(client.get(new_undo), 200)


def test_undo_after_the_window_is_too_late(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, clock: FixedClock
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    undo = undo_link_in(held_mail(bot, before, CAROL))
    form = the_form(client.get(undo))
    clock.at += WINDOW
    bot.sweep()

    late = client.post(form["action"], data={**dict(untouched(form)), "confirm": "undo"})

    assert_clean_page(late, 410)
    assert "Your answer has taken effect" in text_of(late)
    assert validation(request_state(bot, request_id), CAROL)["status"] == "accepted"


def test_an_emailed_answer_during_the_window_replaces_the_held_one(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    token = links[CAROL].removeprefix("/v/")
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    undo = undo_link_in(held_mail(bot, before, CAROL))

    bot.receive(mail(CAROL, f"REFUSE {token}"))

    state = request_state(bot, request_id)
    assert state["status"] == "refused"
    carol = validation(state, CAROL)
    assert (carol["status"], carol["channel"], carol["held"]) == ("refused", "email", None)
    assert bot.sweep(now=START + WINDOW).applied == 0
    assert request_state(bot, request_id) == state
    closed = client.get(undo)
    assert_clean_page(closed, 410)
    assert "You refused request" in text_of(closed)
    assert "it can no longer be undone" in text_of(closed)
    assert not read(closed.text).forms


def test_a_request_cancelled_during_the_window_applies_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    answer(client, links[CAROL], "accept")
    bot.cancel_request(request_id)
    before = last_outbox_id(bot)

    assert bot.sweep(now=START + WINDOW).applied == 0

    state = request_state(bot, request_id)
    assert state["status"] == "cancelled"
    assert validation(state, CAROL)["status"] == "pending"
    assert last_outbox_id(bot) == before


def test_the_undo_token_rests_only_as_a_digest(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    _, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    told = held_mail(bot, before, CAROL)
    secret = undo_link_in(told).removeprefix("/u/")

    bot.flush_outbox(Sink())

    with bot.engine.connect() as connection:
        content = " ".join(
            str(value)
            for table in ("validation", "outbox", "event", "validation_token")
            for row in connection.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
            for value in row
        )
    assert secret not in content
    assert secret.lower() not in content
    assert tokens.digest(secret) in content


class Sink:
    """A transport that accepts everything."""

    def send(
        self, envelope_from: str, recipient: str, payload: bytes, commit_point: CommitPoint
    ) -> None:
        pass


# -- what must not decide ---------------------------------------------------------


def test_a_scanner_that_submits_every_form_decides_nothing(
    bot: Mailbot, settings: Settings, mail: MailFactory, client: httpx.Client, tmp_path: Path
) -> None:
    """A scanner opens the link, then posts every form on the page with the values a
    browser sends untouched, even with same-origin headers: nothing is decided."""
    request_id, links = open_tech_change(bot, mail)
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[bot]\naddress = "changes@bot.test"\nbase_url = "https://bot.test"\n'
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[outgoing]\nmaildir = "{tmp_path / "cli-sent"}"\n'
    )

    def shown() -> dict[str, Any]:
        run = subprocess.run(
            [str(MAILBOT), "--config", str(config), "requests", "show", request_id, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        data: dict[str, Any] = json.loads(run.stdout)
        data.pop("events")
        return data

    before_mails, before = last_outbox_id(bot), shown()
    same_origin = {"origin": "https://bot.test", "sec-fetch-site": "same-origin"}
    for link in (links[CAROL], links[ALICE]):
        for headers in ({}, same_origin):
            page = client.get(link, headers=headers)
            assert client.head(link).status_code == 200
            forms = read(page.text).forms
            assert forms
            for form in forms:
                posted = submit(client, form, untouched(form), headers)
                assert_clean_page(posted, 422)
                assert ("choose" in text_of(posted)) or ("choisissez" in text_of(posted))
                assert the_form(posted)  # the page asks again, with a fresh form

    assert shown() == before
    assert all(v["held"] is None for v in before["validations"])
    assert last_outbox_id(bot) == before_mails


def test_a_scanner_on_the_undo_link_undoes_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    undo = undo_link_in(held_mail(bot, before, CAROL))
    held = request_state(bot, request_id)

    for form in read(client.get(undo).text).forms:
        assert_clean_page(submit(client, form, untouched(form)), 422)

    assert request_state(bot, request_id) == held
    bot.sweep(now=START + WINDOW)
    assert validation(request_state(bot, request_id), CAROL)["status"] == "accepted"


CROSS_SITE = [
    {"origin": "https://evil.test"},
    {"origin": "null"},
    {"origin": "http://bot.test"},  # another scheme is another origin
    {"origin": "https://bot.test:8443"},
    {"origin": "https://bot.test.evil.test"},
    {"origin": "not a url"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"origin": "https://bot.test", "sec-fetch-site": "cross-site"},
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: " ".join(h.values()))
def test_a_cross_site_post_is_refused_and_records_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, headers: dict[str, str]
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")
    with nothing_recorded(bot, request_id):
        response = client.post(action, data=fields, headers=headers)

        assert_clean_page(response, 403)


def test_two_origin_headers_are_refused_unless_both_are_ours(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")
    body = "&".join(f"{k}={v}" for k, v in fields.items())
    form_type = ("content-type", "application/x-www-form-urlencoded")

    mixed = client.post(
        action,
        content=body,
        headers=[form_type, ("origin", "https://bot.test"), ("origin", "https://evil.test")],
    )

    assert_clean_page(mixed, 403)
    assert validation(request_state(bot, request_id), CAROL)["held"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://bot.test", "sec-fetch-site": "same-origin"},
        {"origin": "HTTPS://BOT.test:443"},
        {"sec-fetch-site": "none"},
        {},
    ],
    ids=["same-origin", "default-port", "typed-in", "no-header"],
)
def test_a_same_origin_or_headerless_post_with_a_choice_is_held(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, headers: dict[str, str]
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")

    assert_clean_page(client.post(action, data=fields, headers=headers), 200)

    assert validation(request_state(bot, request_id), CAROL)["held"] == "accept"


def test_a_cross_site_undo_is_refused(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    answer(client, links[CAROL], "accept")
    form = the_form(client.get(undo_link_in(held_mail(bot, before, CAROL))))
    data = {**dict(untouched(form)), "confirm": "undo"}

    for headers in CROSS_SITE:
        assert_clean_page(client.post(form["action"], data=data, headers=headers), 403)

    assert validation(request_state(bot, request_id), CAROL)["held"] == "accept"
    assert_clean_page(client.post(form["action"], data={"confirm": "undo"}), 403)  # no nonce
    assert validation(request_state(bot, request_id), CAROL)["held"] == "accept"


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"decision": "accept"}},
        {"data": {"decision": "accept", "nonce": ""}},
        {"json": {"decision": "accept"}},
        {"files": {"decision": (None, "accept")}},
    ],
    ids=["no-nonce", "empty-nonce", "json", "multipart"],
)
def test_a_blind_post_is_forbidden_and_records_nothing(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, body: dict[str, Any]
) -> None:
    request_id, links = open_tech_change(bot, mail)
    with nothing_recorded(bot, request_id):
        response = client.post(links[CAROL], **body)

        assert_clean_page(response, 403)
        assert "This form is no longer valid" in text_of(response)


def test_a_forged_or_foreign_or_expired_nonce_is_forbidden(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, clock: FixedClock
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")
    nonce = fields["nonce"]
    issued, _, mac = nonce.partition(".")
    _, alices = form_for(client.get(links[ALICE]), "accept")
    forged = [
        f"{issued}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",  # one character off
        f"{int(issued) + 60}.{mac}",  # another time with the same MAC
        f"{int(issued) + 86_400}.{mac}",  # from the future
        alices["nonce"],  # valid, but for another token
        mac,
        "1.2.3",
        "x" * 3000,
    ]
    for bad in forged:
        response = client.post(action, data={**fields, "nonce": bad})
        assert_clean_page(response, 403)

    clock.at += timedelta(hours=2, minutes=1)  # the page was left open too long
    assert_clean_page(client.post(action, data=fields), 403)
    assert {v["status"] for v in request_state(bot, request_id)["validations"]} == {"pending"}
    assert {v["held"] for v in request_state(bot, request_id)["validations"]} == {None}

    # Reloading the page gives a fresh nonce that works.
    assert_clean_page(answer(client, links[CAROL], "accept"), 200)


def test_a_link_nonce_does_not_work_on_the_undo_page(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)
    _, fields = form_for(client.get(links[CAROL]), "accept")
    answer(client, links[CAROL], "accept")
    undo = undo_link_in(held_mail(bot, before, CAROL))

    response = client.post(undo, data={"nonce": fields["nonce"], "confirm": "undo"})

    assert_clean_page(response, 403)
    assert validation(request_state(bot, request_id), CAROL)["held"] == "accept"


@pytest.mark.parametrize(
    ("decision", "status"),
    [("maybe", 400), ("ACCEPT ", 400), ("accept,refuse", 400), ("", 422)],  # empty: no choice
)
def test_a_bad_decision_is_a_400(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, decision: str, status: int
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")

    response = client.post(action, data={**fields, "decision": decision})

    assert_clean_page(response, status)
    assert validation(request_state(bot, request_id), CAROL)["held"] is None
    # The same field twice is not a decision either.
    twice = client.post(
        action,
        content=f"nonce={fields['nonce']}&decision=accept&decision=refuse",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_clean_page(twice, 400)
    assert validation(request_state(bot, request_id), CAROL)["held"] is None


def test_an_oversized_form_is_refused(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")
    response = client.post(action, data={**fields, "padding": "x" * 10_000})
    assert_clean_page(response, 413)
    assert request_state(bot, request_id)["status"] == "pending"


# -- bad links, errors and health -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/v/{tokens.new_token()}",
        f"/v/{tokens.group(tokens.new_token()).lower()}",
        "/v/hello",
        "/v/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "/v/" + "A" * 5000,
    ],
    ids=["made-up", "made-up-typed", "hello", "script", "long"],
)
def test_unknown_and_malformed_tokens_get_a_clean_404(client: httpx.Client, path: str) -> None:
    undo = path.replace("/v/", "/u/", 1)
    for response in (
        client.get(path),
        client.post(path, data={"decision": "accept"}),
        client.get(undo),
        client.post(undo, data={"confirm": "undo"}),
    ):
        assert_clean_page(response, 404)
        assert "This link is not valid" in text_of(response)
        assert "hello" not in response.text
        assert "alert(1)" not in response.text
        assert "AAAAAAAA" not in response.text


def test_other_paths_and_methods_get_clean_pages(client: httpx.Client) -> None:
    assert_clean_page(client.get("/"), 404)
    assert_clean_page(client.get("/v/"), 404)
    response = client.put(f"/v/{tokens.new_token()}")
    assert_clean_page(response, 405)
    assert "GET" in response.headers["allow"]


def test_an_internal_error_is_a_clean_500_and_logged(
    bot: Mailbot,
    mail: MailFactory,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, links = open_tech_change(bot, mail)

    def broken(typed: str) -> None:
        raise RuntimeError("database on fire at /secret/path")

    monkeypatch.setattr(bot, "token_page", broken)
    with caplog.at_level(logging.ERROR, logger="mailbot.adapters.web"):
        for response in (client.get(links[CAROL]), client.post(links[CAROL], data={})):
            assert_clean_page(response, 500)
            assert "Something went wrong" in text_of(response)
            assert "secret" not in response.text
            assert "RuntimeError" not in response.text
    logged = [r for r in caplog.records if r.name == "mailbot.adapters.web"]
    assert logged
    assert logged[0].exc_info is not None
    assert all(links[CAROL].removeprefix("/v/") not in r.getMessage() for r in logged)


def test_healthz_tells_whether_the_database_answers(
    bot: Mailbot, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy = client.get("/healthz")
    assert (healthy.status_code, healthy.text.strip()) == (200, "ok")
    assert_security_headers(healthy)

    unreachable = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setattr(bot, "engine", unreachable)
    try:
        assert client.get("/healthz").status_code == 503
    finally:
        unreachable.dispose()


def test_guessing_tokens_is_throttled_per_address(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, clock: FixedClock
) -> None:
    _, links = open_tech_change(bot, mail)
    for _ in range(20):
        assert client.get(f"/v/{tokens.new_token()}").status_code == 404
        clock.at += timedelta(seconds=1)

    throttled = client.get(f"/v/{tokens.new_token()}")
    assert_clean_page(throttled, 429)
    assert "Too many attempts" in text_of(throttled)
    assert 0 < int(throttled.headers["retry-after"]) <= 600
    # Even a good link: the answer must not tell a guesser which tokens exist.
    assert_clean_page(client.get(links[CAROL]), 429)
    assert_clean_page(client.post(links[CAROL], data={"decision": "accept"}), 429)
    assert client.get("/healthz").status_code == 200

    clock.at += timedelta(minutes=10)  # the window has passed
    assert_clean_page(client.get(links[CAROL]), 200)
    assert client.get(f"/v/{tokens.new_token()}").status_code == 404


def test_two_instances_on_one_database_share_the_guess_limit(
    bot: Mailbot, settings: Settings, clock: FixedClock, client: httpx.Client
) -> None:
    """As two processes would: two services with two engines, each serving its own app."""
    other = Mailbot.from_settings(settings, clock)
    try:
        with (
            running(create_app(other)) as base,
            httpx.Client(base_url=base, timeout=10) as second,
        ):
            assert second.get(f"/v/{tokens.new_token()}").status_code == 404
            for _ in range(19):
                assert client.get(f"/v/{tokens.new_token()}").status_code == 404
                clock.at += timedelta(seconds=1)
            # The limit, reached through the first instance, holds on the second.
            assert_clean_page(second.get(f"/v/{tokens.new_token()}"), 429)
            assert_clean_page(client.get(f"/v/{tokens.new_token()}"), 429)
            refused = second.post(f"/u/{tokens.new_token()}", data={"confirm": "undo"})
            assert_clean_page(refused, 429)
            assert 0 < int(refused.headers["retry-after"]) <= 600

            clock.at += timedelta(minutes=10)
            assert second.get(f"/v/{tokens.new_token()}").status_code == 404
    finally:
        other.engine.dispose()


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", "testclient"),
    ],
)
def test_the_throttle_counts_an_ipv6_host_by_its_64(host: str, counted_as: str) -> None:
    assert client_of(Request({"type": "http", "client": (host, 1234)})) == counted_as
