"""The link page in a real headless Chromium: open the link from the mail, choose, send.

Playwright's sync API runs its own event loop in this (the test's) thread while
uvicorn serves from its background thread. Chromium comes from Debian
(``scripts/test`` installs it); ``playwright install`` is never used. One
browser launch costs seconds, so this file stays short and runs on SQLite only.

The bot's ``base_url`` is the served address, as in production: Chromium sends
``Origin`` and ``Sec-Fetch-Site`` with every form, and the page checks them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import START, make_settings, reserve_port
from factories import (
    ALICE,
    CAROL,
    MailFactory,
    Sent,
    last_outbox_id,
    outbox,
    request_state,
    seed_world,
)
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from webserver import running

from mailbot.adapters.web import create_app
from mailbot.clock import FixedClock
from mailbot.service import Mailbot

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WINDOW = timedelta(minutes=10)
PATIENCE_MS = 120_000
"""How long a page may take to load, or an expected text to appear, on a loaded
machine (Playwright's defaults, 30 s and 5 s, are bounds on speed)."""
expect.set_options(timeout=PATIENCE_MS)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; skips without it, except under CI=true."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} not found, and CI=true requires it")
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=PATIENCE_MS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def served(tmp_path: Path, database_url: str, clock: FixedClock) -> Iterator[tuple[Mailbot, str]]:
    """A bot whose ``base_url`` is the uvicorn serving its pages, and that URL."""
    port = reserve_port()
    settings = make_settings(tmp_path, database_url, bot={"base_url": f"http://127.0.0.1:{port}"})
    bot = Mailbot.from_settings(settings, clock)
    seed_world(bot)
    try:
        with running(create_app(bot), port=port) as base:
            yield bot, base
    finally:
        bot.engine.dispose()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(java_script_enabled=False)
    made.set_default_timeout(PATIENCE_MS)
    try:
        yield made
    finally:
        made.close()


def link_in(sent: Sent, base: str, kind: str) -> str:
    found = re.search(re.escape(base) + rf"/{kind}/[0-9A-Z]+", sent.text)
    assert found, sent.text
    return found.group(0)


def carols(bot: Mailbot, request_id: str) -> dict[str, Any]:
    validations = request_state(bot, request_id)["validations"]
    return next(v for v in validations if v["email"] == CAROL)


def test_a_contact_accepts_is_told_undoes_and_accepts_again(
    served: tuple[Mailbot, str], mail: MailFactory, context: BrowserContext, clock: FixedClock
) -> None:
    bot, base = served
    before = last_outbox_id(bot)
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in outbox(bot, after=before) if m.to == CAROL)
    request_id = ask.row.request_id or ""
    page = context.new_page()

    # Sending the form untouched records nothing: the radio buttons are
    # `required`, so Chromium does not even send it (a scanner that does gets 422).
    shown = page.goto(link_in(ask, base, "v"))
    assert shown is not None
    assert shown.status == 200
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text("Change of contacts for example.com")
    send = page.get_by_role("button", name="Send my answer")
    # The inline style applies: the Content-Security-Policy lets it through.
    expect(send).to_have_css("background-color", "rgb(26, 127, 55)")
    expect(page.get_by_role("radio", name="Accept the change")).not_to_be_checked()
    send.click()
    expect(heading).to_have_text("Change of contacts for example.com")  # still asking
    assert carols(bot, request_id)["held"] is None

    # The person picks "accept" and sends.
    mails = last_outbox_id(bot)
    choose(page, "Accept the change")
    expect(heading).to_have_text("Your acceptance is recorded")
    expect(page.locator("body")).to_contain_text("It takes effect on 2026-03-02 09:10 UTC")
    assert (carols(bot, request_id)["status"], carols(bot, request_id)["held"]) == (
        "pending",
        "accept",
    )

    # The mail says what was recorded, and its undo link works within the window.
    told = only_mail(bot, mails)
    assert "ACCEPT the change of contacts for example.com" in told.text
    clock.at = START + timedelta(minutes=5)
    undo_page = page.goto(link_in(told, base, "u"))
    assert undo_page is not None
    assert undo_page.status == 200
    expect(heading).to_have_text("Undo your answer")
    page.get_by_role("checkbox", name="Yes, withdraw my answer").check()
    page.get_by_role("button", name="Undo").click()
    expect(heading).to_have_text("Your answer is withdrawn")
    assert (carols(bot, request_id)["status"], carols(bot, request_id)["held"]) == (
        "pending",
        None,
    )
    assert bot.sweep(now=START + timedelta(hours=1)).applied == 0

    # Answering again; after the window, the decision applies once.
    again = last_outbox_id(bot)
    page.goto(link_in(ask, base, "v"))
    choose(page, "Accept the change")
    expect(heading).to_have_text("Your acceptance is recorded")
    held = only_mail(bot, again)
    assert held.event == "decision-held"
    until = START + timedelta(minutes=5) + WINDOW
    assert bot.sweep(now=until - timedelta(seconds=1)).applied == 0
    assert bot.sweep(now=until).applied == 1
    assert bot.sweep(now=until + timedelta(minutes=1)).applied == 0
    carol = carols(bot, request_id)
    assert (carol["status"], carol["channel"]) == ("accepted", "web")
    assert [(m.event, m.to) for m in outbox(bot, after=held.row.id)] == [
        ("validation-recorded", CAROL)
    ]
    page.goto(link_in(ask, base, "v"))
    expect(heading).to_have_text("You have already answered")


def test_a_form_posted_from_another_site_is_refused(
    served: tuple[Mailbot, str], mail: MailFactory, context: BrowserContext
) -> None:
    """A page elsewhere that posts a copy of our form, nonce included: Chromium
    says where it comes from, and nothing is recorded."""
    bot, base = served
    before = last_outbox_id(bot)
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in outbox(bot, after=before) if m.to == CAROL)
    page = context.new_page()
    page.goto(link_in(ask, base, "v"))
    nonce = page.locator("input[name=nonce]").get_attribute("value")
    action = link_in(ask, base, "v")

    trap = context.new_page()
    trap.route(
        "http://evil.test/trap",
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{action}">'
                f'<input type="hidden" name="nonce" value="{nonce}">'
                '<input type="hidden" name="decision" value="accept">'
                '<button type="submit">Win a prize</button></form>'
            ),
        ),
    )
    trap.goto("http://evil.test/trap")
    with trap.expect_navigation() as navigation:
        trap.get_by_role("button", name="Win a prize").click()
    response = navigation.value
    assert response is not None
    assert response.status == 403
    expect(trap.get_by_role("heading", level=1)).to_have_text("This form is no longer valid")

    assert carols(bot, ask.row.request_id or "")["held"] is None


def choose(page: Page, label: str) -> None:
    """Pick a choice and send the form, as a person does."""
    page.get_by_role("radio", name=label).check()
    page.get_by_role("button", name="Send my answer").click()


def only_mail(bot: Mailbot, after: int) -> Sent:
    mails = outbox(bot, after=after)
    assert [(m.event, m.to) for m in mails] == [("decision-held", CAROL)]
    return mails[0]
