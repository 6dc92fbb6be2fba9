"""Upsert contacts and services from the JSON file DESIGN.md §4 pins.

The whole file is checked before anything is written, and written in one
transaction: an import either applies completely or not at all, and running
it twice changes nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailbot.addresses import normalise_email
from mailbot.errors import ImportFileError
from mailbot.mailparse.lines import CONTROL
from mailbot.storage import queries
from mailbot.storage.engine import transaction
from mailbot.storage.tables import ContactRow, ServiceRow


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        """No field holds a control character: it would end up in the headers of
        mail, and PostgreSQL cannot store a NUL at all."""
        if isinstance(value, str) and CONTROL.search(value):
            raise ValueError(f"control character in {value!r}")
        return value


class ContactIn(_Strict):
    handle: str = Field(min_length=1, max_length=64)
    email: str
    name: str = Field(default="", max_length=200)
    language: Literal["en", "fr"] = "en"
    in_good_standing: bool = True

    @field_validator("handle")
    @classmethod
    def _handle(cls, value: str) -> str:
        value = value.strip().upper()
        if not value or "@" in value or any(ch.isspace() for ch in value):
            raise ValueError("a handle is one word without @, like AM1234-MB")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        email = normalise_email(value)
        if email is None:
            raise ValueError(f"not a plain email address: {value!r}")
        return email

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return " ".join(value.split())


class ServiceIn(_Strict):
    name: str = Field(min_length=1, max_length=253)
    kind: str = Field(default="domain", max_length=32)
    admin: str
    tech: str
    billing: str
    in_good_standing: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("a service name is one word, like example.com")
        return value


class ImportFile(_Strict):
    contacts: list[ContactIn] = Field(default_factory=list)
    services: list[ServiceIn] = Field(default_factory=list)


@dataclass(frozen=True)
class ImportReport:
    contacts_created: int = 0
    contacts_updated: int = 0
    services_created: int = 0
    services_updated: int = 0


def read_import_file(path: Path) -> ImportFile:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFileError(f"{path} is not valid JSON: {exc}") from None
    try:
        return ImportFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ImportFileError(f"{path}: {where}: {first['msg']}") from None


def apply_import(engine: Engine, data: ImportFile, now: datetime) -> ImportReport:
    _check_unique(data)
    with transaction(engine) as session:
        created_c, updated_c = _upsert_contacts(session, data.contacts, now)
        created_s, updated_s = _upsert_services(session, data.services, now)
    return ImportReport(created_c, updated_c, created_s, updated_s)


def _check_unique(data: ImportFile) -> None:
    for what, values in (
        ("contact handle", [c.handle for c in data.contacts]),
        ("contact email", [c.email for c in data.contacts]),
        ("service name", [s.name for s in data.services]),
    ):
        if repeated := sorted({v for v in values if values.count(v) > 1}):
            raise ImportFileError(f"{what} listed twice: {', '.join(repeated)}")


def _upsert_contacts(session: Session, contacts: list[ContactIn], now: datetime) -> tuple[int, int]:
    created = updated = 0
    for item in contacts:
        row = _contact_for(session, item)
        if row is None:
            row = ContactRow(created_at=now, updated_at=now, **item.model_dump())
            session.add(row)
            created += 1
        elif _assign(row, item.model_dump()):
            row.updated_at = now
            updated += 1
        session.flush()
    return created, updated


def _contact_for(session: Session, item: ContactIn) -> ContactRow | None:
    """The stored contact this entry updates, if any.

    A contact first met by email (named as a new holder) has no handle yet and
    is adopted by the entry with its address; an address that belongs to
    another handle is a conflict, never silently moved.
    """
    by_handle = queries.contact_by_handle(session, item.handle)
    by_email = queries.contact_by_email(session, item.email)
    if by_email is None or (by_handle is not None and by_email.id == by_handle.id):
        return by_handle
    if by_handle is None and by_email.handle is None:
        return by_email
    raise ImportFileError(
        f"contact {item.handle}: {item.email} already belongs to contact "
        f"{by_email.handle or by_email.email}"
    )


def _upsert_services(session: Session, services: list[ServiceIn], now: datetime) -> tuple[int, int]:
    created = updated = 0
    for item in services:
        values: dict[str, Any] = {
            "name": item.name,
            "kind": item.kind,
            "in_good_standing": item.in_good_standing,
        }
        for role in ("admin", "tech", "billing"):
            values[f"{role}_id"] = _holder(session, item.name, role, getattr(item, role))
        row = queries.service_row(session, item.name)
        if row is None:
            session.add(ServiceRow(updated_at=now, **values))
            created += 1
        elif _assign(row, values):
            row.updated_at = now
            updated += 1
        session.flush()
    return created, updated


def _holder(session: Session, service: str, role: str, reference: str) -> int:
    contact = (
        queries.contact_by_email(session, reference)
        if "@" in reference
        else queries.contact_by_handle(session, reference.strip())
    )
    if contact is None or contact.id is None:
        raise ImportFileError(f"service {service}: {role} contact {reference!r} is not known")
    return contact.id


def _assign(row: Any, values: dict[str, Any]) -> bool:
    """Set the values that differ; True if anything changed."""
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed
