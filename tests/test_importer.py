from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from factories import WORLD

from mailbot.errors import ImportFileError
from mailbot.service import Mailbot
from mailbot.service.importer import apply_import, read_import_file
from mailbot.storage import queries
from mailbot.storage.engine import transaction


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "import.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_import_is_an_idempotent_upsert(bot: Mailbot, tmp_path: Path) -> None:
    path = write(tmp_path, WORLD)
    first = apply_import(bot.engine, read_import_file(path), bot.clock.now())
    assert (first.contacts_created, first.services_created) == (5, 2)
    again = apply_import(bot.engine, read_import_file(path), bot.clock.now())
    assert (
        again.contacts_created,
        again.contacts_updated,
        again.services_created,
        again.services_updated,
    ) == (0, 0, 0, 0)
    changed = json.loads(json.dumps(WORLD))
    changed["contacts"][0]["name"] = "Alice Martin-Dupont"
    changed["services"][0]["tech"] = "CA400-MB"
    report = apply_import(bot.engine, read_import_file(write(tmp_path, changed)), bot.clock.now())
    assert (report.contacts_updated, report.services_updated) == (1, 1)
    with transaction(bot.engine) as session:
        row = queries.service_row(session, "example.com")
        assert row is not None
        assert queries.service(session, row).holders[queries.Role.TECH].email == "carol@agency.test"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"contacts": [{"handle": "X1", "email": "not-an-address"}]}, r"contacts\.0\.email"),
        (
            {"contacts": [{"handle": "X1", "email": "a@b.test", "language": "de"}]},
            r"contacts\.0\.language",
        ),
        (
            {"contacts": [{"handle": "X1", "email": "a@b.test", "colour": "red"}]},
            r"contacts\.0\.colour",
        ),
        (
            {"services": [{"name": "x.test", "admin": "NOPE", "tech": "NOPE", "billing": "NOPE"}]},
            "not known",
        ),
        (
            {
                "contacts": [
                    {"handle": "X1", "email": "a@b.test"},
                    {"handle": "X2", "email": "a@b.test"},
                ]
            },
            "listed twice",
        ),
        ([], "Input should be"),
        (
            {"contacts": [{"handle": "X1", "email": "a@b.test", "name": "A\u0000B"}]},
            r"contacts\.0\.name: .*control character",
        ),
        (
            {
                "contacts": [{"handle": "X1", "email": "a@b.test"}],
                "services": [
                    {"name": "x\u0001.test", "admin": "X1", "tech": "X1", "billing": "X1"}
                ],
            },
            r"services\.0\.name: .*control character",
        ),
    ],
)
def test_bad_files_are_refused_whole(bot: Mailbot, tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        apply_import(bot.engine, read_import_file(write(tmp_path, data)), bot.clock.now())
    with transaction(bot.engine) as session:
        assert queries.contact_by_handle(session, "X1") is None


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        read_import_file(tmp_path / "nope.json")


def test_an_address_already_owned_by_another_handle_is_refused(
    bot: Mailbot, tmp_path: Path
) -> None:
    apply_import(bot.engine, read_import_file(write(tmp_path, WORLD)), bot.clock.now())
    for clash in (
        {"handle": "NEW1", "email": "bob@example.com"},
        {"handle": "AM1234-MB", "email": "bob@example.com"},
    ):
        with pytest.raises(ImportFileError, match="already belongs to contact BB200-MB"):
            apply_import(
                bot.engine,
                read_import_file(write(tmp_path, {"contacts": [clash]})),
                bot.clock.now(),
            )


def test_a_contact_first_met_by_email_is_adopted_by_its_handle(
    bot: Mailbot, tmp_path: Path
) -> None:
    first = {"contacts": [{"handle": "X1", "email": "a@b.test"}]}
    apply_import(bot.engine, read_import_file(write(tmp_path, first)), bot.clock.now())
    with transaction(bot.engine) as session:
        row = queries.contact_by_handle(session, "X1")
        assert row is not None
        row.handle = None  # as if created from a CHANGE naming a@b.test
    apply_import(bot.engine, read_import_file(write(tmp_path, first)), bot.clock.now())
    with transaction(bot.engine) as session:
        adopted = queries.contact_by_handle(session, "X1")
        assert adopted is not None
        assert adopted.email == "a@b.test"
