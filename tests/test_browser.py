"""The link page in a real headless Chromium: open the link from the mail, press Accept.

Playwright's sync API runs its own event loop in this (the test's) thread while
uvicorn serves from its background thread. Chromium comes from Debian
(``scripts/test`` installs it); ``playwright install`` is never used. One
browser launch costs seconds, so this file stays short and runs on SQLite only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import ALICE, CAROL, MailFactory, last_outbox_id, outbox
from playwright.sync_api import Browser, expect, sync_playwright
from webserver import running

from mailbot import store
from mailbot.adapters.web import create_app
from mailbot.db import transaction
from mailbot.service import Mailbot
from mailbot.views import request_json

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

pytestmark = [
    pytest.mark.usefixtures("world"),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; skips without it, except under CI=true."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} not found, and CI=true requires it")
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def test_a_contact_opens_the_mailed_link_and_accepts(
    bot: Mailbot, mail: MailFactory, browser: Browser
) -> None:
    before = last_outbox_id(bot)
    bot.receive(mail(ALICE, "CHANGE example.com", f"tech: {CAROL}"))
    ask = next(m for m in outbox(bot, after=before) if m.to == CAROL)
    found = re.search(r"https://bot\.test(/v/[0-9A-Z]+)", ask.text)
    assert found, ask.text

    with running(create_app(bot)) as base:
        context = browser.new_context(java_script_enabled=False)
        try:
            page = context.new_page()
            shown = page.goto(base + found.group(1))
            assert shown is not None
            assert shown.status == 200
            heading = page.get_by_role("heading", level=1)
            expect(heading).to_have_text("Change of contacts for example.com")
            accept = page.get_by_role("button", name="Accept")
            # The inline style applies: the Content-Security-Policy lets it through.
            expect(accept).to_have_css("background-color", "rgb(26, 127, 55)")
            accept.click()
            expect(heading).to_have_text("Your acceptance is recorded")
            body = page.locator("body").inner_text()
        finally:
            context.close()

    assert "Your acceptance is recorded" in body
    assert "waiting for" in body
    assert ALICE in body
    with transaction(bot.engine) as session:
        row = store.request_row(session, ask.row.request_id or "")
        assert row is not None
        validations = {v["email"]: v for v in request_json(session, row)["validations"]}
    assert (validations[CAROL]["status"], validations[CAROL]["channel"]) == ("accepted", "web")
    assert validations[ALICE]["status"] == "pending"
