"""The link page over real HTTP: a uvicorn server in a thread, httpx as the browser.

Requests are opened by mail and links taken from the queued validation mails,
so the page is tested with the tokens people really get. Forms are read from
the HTML and submitted as a browser would.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from factories import ALICE, BOB, CAROL, MailFactory, last_outbox_id, outbox
from starlette.requests import Request
from webserver import running

from mailbot import store, tokens
from mailbot.adapters.web import client_of, create_app
from mailbot.clock import FixedClock
from mailbot.db import transaction
from mailbot.service import Mailbot
from mailbot.views import request_json

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
            self.forms.append({"action": values.get("action", ""), "fields": {}})
        elif tag == "input" and self.forms and "name" in values:
            self.forms[-1]["fields"][values["name"]] = values.get("value", "")

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


def form_for(response: httpx.Response, decision: str) -> tuple[str, dict[str, str]]:
    """The action and fields of the page's form that sends ``decision``."""
    forms = read(response.text).forms
    found = [f for f in forms if f["fields"].get("decision") == decision]
    assert len(found) == 1, forms
    return found[0]["action"], found[0]["fields"]


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


def request_state(bot: Mailbot, request_id: str) -> dict[str, Any]:
    with transaction(bot.engine) as session:
        row = store.request_row(session, request_id)
        assert row is not None
        return request_json(session, row)


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
    assert headers["referrer-policy"] == "no-referrer"
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
    assert '<html lang="en">' in page.text
    assert [f["fields"]["decision"] for f in read(page.text).forms] == ["accept", "refuse"]
    # The token appears in the forms' action only.
    token = links[CAROL].removeprefix("/v/")
    assert page.text.count(token) == 2
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
    assert "Accepter" in text
    assert "Refuser" in text
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


# -- deciding ---------------------------------------------------------------------


def test_accepting_records_a_web_decision_and_names_who_is_awaited(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    before = last_outbox_id(bot)

    result = answer(client, links[CAROL], "accept")

    assert_clean_page(result, 200)
    text = text_of(result)
    assert "Your acceptance is recorded" in text
    assert "waiting for" in text
    assert ALICE in text.partition("waiting for")[2]
    state = request_state(bot, request_id)
    assert state["status"] == "pending"
    carol = next(v for v in state["validations"] if v["email"] == CAROL)
    assert (carol["status"], carol["channel"]) == ("accepted", "web")
    assert carol["decided_at"]
    assert [(m.event, m.to) for m in outbox(bot, after=before)] == [("validation-recorded", CAROL)]


def test_the_last_acceptance_makes_the_change_effective(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)

    first = answer(client, links[ALICE], "accept")  # French: waiting for Carol
    assert_clean_page(first, 200)
    assert "Votre acceptation est enregistrée" in text_of(first)
    assert CAROL in text_of(first).partition("attend maintenant")[2]

    before = last_outbox_id(bot)
    last = answer(client, links[CAROL], "accept")
    assert_clean_page(last, 200)
    assert "The change is now effective" in text_of(last)
    state = request_state(bot, request_id)
    assert state["status"] == "done"
    assert {v["channel"] for v in state["validations"]} == {"web"}
    with transaction(bot.engine) as session:
        row = store.service_row(session, "example.com")
        assert row is not None
        assert store.service(session, row).holders[store.Role.TECH].email == CAROL
    assert {m.event for m in outbox(bot, after=before)} == {"request-done"}


def test_refusing_refuses_the_whole_request(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)

    result = answer(client, links[CAROL], "refuse")

    assert_clean_page(result, 200)
    assert "You refused the change" in text_of(result)
    state = request_state(bot, request_id)
    assert state["status"] == "refused"
    carol = next(v for v in state["validations"] if v["email"] == CAROL)
    assert (carol["status"], carol["channel"]) == ("refused", "web")
    # Alice's link now leads to a closed request.
    closed = client.get(links[ALICE])
    assert_clean_page(closed, 410)
    assert "Cette demande est close" in text_of(closed)
    assert "refusée" in text_of(closed)
    assert not read(closed.text).forms


# -- what must not decide ---------------------------------------------------------


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
    before_mails, before = last_outbox_id(bot), request_state(bot, request_id)

    response = client.post(links[CAROL], **body)

    assert_clean_page(response, 403)
    assert "This form is no longer valid" in text_of(response)
    assert request_state(bot, request_id) == before
    assert last_outbox_id(bot) == before_mails


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

    # Reloading the page gives a fresh nonce that works.
    assert_clean_page(answer(client, links[CAROL], "accept"), 200)


@pytest.mark.parametrize("decision", ["maybe", "", "ACCEPT ", "accept,refuse"])
def test_a_bad_decision_is_a_400(
    bot: Mailbot, mail: MailFactory, client: httpx.Client, decision: str
) -> None:
    request_id, links = open_tech_change(bot, mail)
    action, fields = form_for(client.get(links[CAROL]), "accept")

    response = client.post(action, data={**fields, "decision": decision})

    assert_clean_page(response, 400)
    assert request_state(bot, request_id)["status"] == "pending"
    # The same field twice is not a decision either.
    twice = client.post(
        action,
        content=f"nonce={fields['nonce']}&decision=accept&decision=refuse",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_clean_page(twice, 400)


def test_a_used_token_gets_410_on_get_and_post(
    bot: Mailbot, mail: MailFactory, client: httpx.Client
) -> None:
    request_id, links = open_tech_change(bot, mail)
    page = client.get(links[CAROL])
    action, fields = form_for(page, "accept")
    assert client.post(action, data=fields).status_code == 200
    before_mails, before = last_outbox_id(bot), request_state(bot, request_id)

    again = client.get(links[CAROL])
    assert_clean_page(again, 410)
    assert "You have already answered" in text_of(again)
    assert "accepted on the web page" in text_of(again)
    assert not read(again.text).forms
    for decision in ("accept", "refuse"):  # the old form, submitted again
        resubmitted = client.post(action, data={**fields, "decision": decision})
        assert_clean_page(resubmitted, 410)
    assert request_state(bot, request_id) == before
    assert last_outbox_id(bot) == before_mails


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
    for response in (client.get(path), client.post(path, data={"decision": "accept"})):
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
