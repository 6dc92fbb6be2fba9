"""Templates to (subject, text, html): a pure function of a template name and values.

Mail templates live in ``templates/mail/<language>/<event>.{txt,html}.j2``;
the text template's first line is ``Subject: ...``. An operator directory
given as ``[bot] templates_dir`` is searched before the shipped templates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

LANGUAGES = ("en", "fr")

MAIL_CONTEXT: dict[str, Any] = {
    "request": None,
    "token": None,
    "link": None,
    "reply_address": None,
    "side": None,
    "error": None,
    "command": "",
    "original_subject": "",
    "decision": None,
    "failed_contact": None,
    "diagnostic": "",
    "reminder_number": None,
    "cancelled_by": None,
    "service": "",
    "standing": "",
    "roles": "",
    "requester": None,
    "entries": None,
    "truncated": False,
    "limit": None,
    "commands": None,
    "action": None,
    "expires_at": None,
}
"""Every key a mail template may read, with its value when a mail has none:
templates run with StrictUndefined, so a key missing here is a bug caught at once."""


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


class TemplateError(Exception):
    """A template is missing or broken: an operator's problem, reported clearly."""


def format_datetime(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


class RememberingLoader(jinja2.FileSystemLoader):
    """Templates from the search path, read again whenever their file changes;
    one that vanishes from every directory is served as last read.

    A running mailbot reads a template when it first renders it and when its
    file changes (an operator's edit takes effect at once). Installing a new
    version over a running one removes the package's files before writing
    the new ones: a mail rendered in between would find no template and be
    dead. It gets the template it would have got a moment earlier instead;
    the new file is read once it is there. A template never read is still
    missing, with the usual clear error.
    """

    def __init__(self, searchpath: list[str]) -> None:
        super().__init__(searchpath)
        self._last: dict[str, tuple[str, str]] = {}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        try:
            source, filename, uptodate = super().get_source(environment, template)
        except jinja2.TemplateNotFound:
            if template not in self._last:
                raise
            source, filename = self._last[template]
            return source, filename, lambda: False  # look on disk again next time
        self._last[template] = (source, filename)
        return source, filename, uptodate


def make_environment(override_dir: Path | None = None) -> jinja2.Environment:
    shipped = Path(str(files("mailbot.templates")))
    search_path = [str(override_dir), str(shipped)] if override_dir else [str(shipped)]
    environment = jinja2.Environment(
        loader=RememberingLoader(search_path),
        undefined=jinja2.StrictUndefined,
        # HTML templates are escaped; the text ones are plain text, where escaping is wrong.
        autoescape=lambda name: name is not None and name.endswith(".html.j2"),  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["dt"] = format_datetime
    return environment


class Renderer:
    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def mail(self, event: str, language: str, context: dict[str, Any]) -> RenderedMail:
        language = language if language in LANGUAGES else LANGUAGES[0]
        base = f"mail/{language}/{event}"
        text = self._render(f"{base}.txt.j2", context)
        html = self._render(f"{base}.html.j2", context)
        first, _, body = text.partition("\n")
        if not first.startswith("Subject:"):
            raise TemplateError(f"{base}.txt.j2 must start with a 'Subject:' line")
        subject = " ".join(first.removeprefix("Subject:").split())
        return RenderedMail(subject=subject, text=body.lstrip("\n"), html=html)

    def page(self, name: str, context: dict[str, Any]) -> str:
        return self._render(f"web/{name}.html.j2", context)

    def _render(self, name: str, context: dict[str, Any]) -> str:
        try:
            return self.environment.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template not found: {exc.name}") from None
