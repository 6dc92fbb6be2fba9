"""Settings: read once at start-up, validated, then passed explicitly.

Sources, strongest first: ``MAILBOT_<SECTION>__<KEY>`` environment variables,
then one TOML file (``--config``, else ``$MAILBOT_CONFIG``, else
``./mailbot.toml`` if present), then the defaults written next to each key
below, which run on one machine with nothing else installed.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mailbot import configfile
from mailbot.configfile import config_path, read_toml
from mailbot.errors import ConfigError

Language = Literal["en", "fr"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BotSettings(Section):
    address: str = "changes@mailbot.localhost"
    """Requests go to this address and every mail is sent from it."""
    name: str = "mailbot"
    """Display name on outgoing mail."""
    base_url: str = "http://127.0.0.1:8080"
    """Prefix of the links in emails; unset, it follows ``[web] host`` and ``port``."""
    language: Language = "en"
    """Language for people mailbot does not know yet."""
    templates_dir: Path | None = None
    """An operator's directory whose templates override the shipped ones."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        local, _, domain = value.partition("@")
        if not local or not domain or any(ch.isspace() for ch in value) or "+" in local:
            raise ValueError("must be a plain address like changes@example.com")
        return value.lower()

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def domain(self) -> str:
        return self.address.partition("@")[2]

    @property
    def local_part(self) -> str:
        return self.address.partition("@")[0]


class DatabaseSettings(Section):
    url: str = configfile.DEFAULT_DATABASE_URL
    """SQLAlchemy URL: ``sqlite:///PATH`` or ``postgresql+psycopg://...``."""
    busy_timeout_seconds: float = Field(default=configfile.DEFAULT_BUSY_TIMEOUT_SECONDS, gt=0)
    """How long a writer waits for a locked SQLite database before giving up."""
    min_free_bytes: int | None = Field(default=None, ge=0)
    """``/healthz`` answers 503 when the disk holding the SQLite database or the
    outgoing Maildir has less free space than this. Unset: twice
    ``[smtp] max_message_bytes``."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value


class SmtpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    max_message_bytes: int = Field(default=configfile.DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    """Larger messages are refused with 552."""
    domains: list[str] = Field(default_factory=list)
    """Domains accepted at RCPT besides the bot address's own."""
    max_connections: int = Field(default=500, ge=1)
    """Open SMTP sessions at once. At the cap, the oldest session with no message
    in flight is closed to make room; if every one is busy, the newcomer gets
    ``421 4.7.0`` and retries later. Lowered at start if the open-file limit is
    too small for both listeners."""
    max_connections_per_client: int = Field(default=50, ge=1)
    """Open SMTP sessions from one IP address (a front MTA on the same host
    counts as one client: keep this above its concurrency to mailbot)."""
    max_recipients: int = Field(default=100, ge=1)
    """Recipients in one transaction; beyond, ``452 4.5.3`` and the client sends
    the rest in another transaction. A bot address needs few (Postfix: 1000)."""
    timeout_seconds: float = Field(default=60.0, gt=0)
    """How long a client may stay silent before the next command, and how long
    the whole message after DATA may take, before the session is closed."""
    max_session_seconds: float = Field(default=600.0, gt=0)
    """Total lifetime of one SMTP session, however busy, so that a client
    trickling commands cannot hold a connection for ever."""
    authserv_id: str | None = None
    """The front MTA's own authserv-id: only ``Authentication-Results`` headers
    bearing it are read (case-insensitively). Unset: none is trusted, and every
    sender is unauthenticated (``none``), which makes CANCEL and RESEND by mail
    wait for a confirmation."""

    @field_validator("authserv_id")
    @classmethod
    def _authserv_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or any(ch.isspace() or ch in ';()"' for ch in value.strip()):
            raise ValueError("must be one word, the authserv-id the front MTA writes")
        return value.strip().lower()


class WebSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    secret_key: str | None = Field(default=None, min_length=16, repr=False)
    """Signs the nonce in the link page's forms. Unset: a random key per process,
    so a page loaded before a restart must be reloaded. Set the same value on
    every instance that serves the same database."""
    max_connections: int = Field(default=1000, ge=1)
    """Open HTTP connections at once. At the cap, the oldest connection that has
    not sent a complete request is closed to make room; if every one is busy,
    the newcomer gets 503. Lowered at start if the open-file limit is too small
    for both listeners."""
    max_connections_per_client: int = Field(default=100, ge=1)
    """Open HTTP connections from one IP address (behind a reverse proxy every
    visitor is the proxy's address: raise it to ``max_connections`` there)."""
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time for a request's line and headers to arrive, counted from the
    connection or from the previous response; then the connection is closed."""
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Time for a request's body to arrive once its headers are in."""
    keepalive_seconds: int = Field(default=5, ge=1)
    """How long an idle connection is kept open for the client's next request."""
    undo_minutes: int = Field(default=10, ge=1, le=1440)
    """How long a decision made on the link page is held before it takes effect;
    the contact is mailed what was chosen, with a link that undoes it until then."""
    metrics_allow: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Client addresses or networks (``10.0.0.0/8``) that may read ``/metrics``;
    anyone else gets 404. Checked against the connection's own peer address,
    never ``X-Forwarded-For``; a request that came through a proxy is refused."""

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        try:
            return [str(ipaddress.ip_network(item.strip(), strict=False)) for item in value]
        except ValueError as exc:
            raise ValueError(f"must be IP addresses or networks: {exc}") from None


class OutgoingSettings(Section):
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Path("var/sent")
    """Standard Maildir that receives outgoing mail when transport = "maildir"."""
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=0, le=65535)
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    max_attempts: int | None = Field(default=None, ge=1)
    """Unset (the default): a mail is retried until ``queue_lifetime_hours`` has
    passed. Set: it is also marked dead after this many failed attempts, whichever
    comes first. A permanent refusal (5xx, an address that cannot be sent) is
    dead at once either way."""
    queue_lifetime_hours: float = Field(default=120.0, gt=0)
    """How long a mail that keeps failing temporarily is retried before it is
    marked dead (5 days, as Postfix's ``maximal_queue_lifetime``)."""
    max_backoff_seconds: int = Field(default=3600, ge=30)
    """The longest wait between two attempts; the wait doubles from 30 s up to it."""


class ImapSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=993, ge=0, le=65535)
    ssl: bool = True
    starttls: bool = False
    username: str | None = Field(default=None, validate_default=True)
    password: str | None = Field(default=None, repr=False)
    folder: str = "INBOX"
    done_folder: str = "mailbot-done"
    failed_folder: str = "mailbot-failed"
    idle: bool = True
    poll_seconds: int = Field(default=60, gt=0)

    @field_validator("username")
    @classmethod
    def _needed_when_enabled(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("enabled") and not value:
            raise ValueError("required when [imap] enabled = true")
        return value


class PolicySettings(Section):
    request_ttl_days: int = Field(default=14, gt=0)
    reminder_days: list[int] = Field(default_factory=lambda: [3, 7, 12])
    """Days after opening when the contacts still awaited are reminded."""
    sweep_seconds: int = Field(default=60, gt=0)
    """How often ``serve`` runs the sweep (reminders and expiry)."""
    operators: list[str] = Field(default_factory=list)
    """Addresses allowed to open requests for any service."""
    trusted_forwarders: list[str] = Field(default_factory=list)
    """Agency mailboxes whose forwarded mail speaks for the original sender."""
    max_bad_tokens_per_hour: int = Field(default=5, gt=0)
    """Wrong tokens tolerated from one address in an hour before it is throttled."""
    max_answers_per_hour: int = Field(default=10, gt=0)
    """Error and help mails sent to one address in an hour; beyond, mailbot stays
    silent (it still records what it received). Workflow mails are never limited."""
    max_unsolicited_per_day: int = Field(default=3, ge=0)
    """Mails a day to an address mailbot has no reason to trust: not an imported
    contact, not a role holder, not an operator, and never answered a validation.
    Beyond it the mail is held back (the event log says so), so that a forged
    request cannot turn mailbot against a stranger; known contacts are never limited."""

    @field_validator("operators", "trusted_forwarders")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [address.strip().lower() for address in value]

    @field_validator("reminder_days")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(day <= 0 for day in value):
            raise ValueError("reminder days must be positive")
        return sorted(set(value))


class LogSettings(Section):
    format: Literal["text", "json"] = "text"
    """``text``: one readable line per record. ``json``: one JSON object per line
    (time, level, logger, message, and ``inbound_id``, ``request_id``,
    ``outcome``, ``event`` where known), tokens and reply keys redacted."""


class WorkersSettings(Section):
    processes: int = Field(default=0, ge=0, le=64)
    """Processes that ``serve`` starts to act on stored mail. 0: ``serve`` acts on
    it itself, between arrivals. N: its listener only stores, and N worker
    processes (``mailbot worker``, restarted if they die, stopped with
    ``serve``) claim and act on it, and send what it queues. Several make
    sense on PostgreSQL; on SQLite, where one process writes at a time, 0 or 1
    (1 keeps acting out of the listener's process, which answers faster)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAILBOT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    bot: BotSettings = BotSettings()
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    web: WebSettings = WebSettings()
    outgoing: OutgoingSettings = OutgoingSettings()
    imap: ImapSettings = ImapSettings()
    policy: PolicySettings = PolicySettings()
    log: LogSettings = LogSettings()
    workers: WorkersSettings = WorkersSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init values.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _links_follow_the_web_listener(self) -> Settings:
        """Without an explicit ``[bot] base_url``, links point at ``[web]`` host and port."""
        if "base_url" not in self.bot.model_fields_set:
            url = f"http://{self.web.host}:{self.web.port}"
            object.__setattr__(self, "bot", self.bot.model_copy(update={"base_url": url}))
        return self

    def is_operator(self, address: str) -> bool:
        return address.lower() in self.policy.operators


def load_settings(explicit: str | None = None) -> Settings:
    """Read and validate the configuration, or raise ConfigError naming the key."""
    path = config_path(explicit)
    values: dict[str, Any] = {}
    if path is not None:
        values = read_toml(path)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{key}: {message}")
    return f"invalid configuration{where}: " + "; ".join(problems)
