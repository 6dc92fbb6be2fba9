from __future__ import annotations

from pathlib import Path

import pytest

from mailbot.config import load_settings
from mailbot.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("MAILBOT_"):
            monkeypatch.delenv(name)


def test_defaults_run_on_one_machine() -> None:
    settings = load_settings()
    assert settings.bot.address == "changes@mailbot.localhost"
    assert settings.database.url == "sqlite:///var/mailbot.db"
    assert settings.outgoing.transport == "maildir"
    assert str(settings.outgoing.maildir) == "var/sent"
    assert settings.policy.reminder_days == [3, 7, 12]
    assert settings.imap.enabled is False


def test_file_from_option_then_env_then_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mailbot.toml").write_text('[bot]\nlanguage = "fr"\n')
    assert load_settings().bot.language == "fr"
    other = tmp_path / "other.toml"
    other.write_text("[web]\nport = 9000\n")
    monkeypatch.setenv("MAILBOT_CONFIG", str(other))
    assert load_settings().web.port == 9000
    assert load_settings().bot.language == "en"
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[smtp]\nport = 2600\n")
    assert load_settings(str(explicit)).smtp.port == 2600


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[policy]\nrequest_ttl_days = 20\noperators = ["a@x.test"]\n')
    monkeypatch.setenv("MAILBOT_POLICY__REQUEST_TTL_DAYS", "30")
    settings = load_settings(str(path))
    assert settings.policy.request_ttl_days == 30
    assert settings.policy.operators == ["a@x.test"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[bot]\nlanguage = "de"\n', "bot.language"),
        ('[smtp]\nport = "many"\n', "smtp.port"),
        ('[bot]\nadress = "x@y.test"\n', "bot.adress"),
        ('[outgoing]\ntransport = "pigeon"\n', "outgoing.transport"),
        ("[botz]\n", "botz"),
        ('[bot]\nbase_url = "ftp://x"\n', "bot.base_url"),
        ("[imap]\nenabled = true\n", "imap.username"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(str(path))


def test_invalid_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILBOT_WEB__PORT", "-3")
    with pytest.raises(ConfigError, match=r"web\.port"):
        load_settings()


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[bot\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(broken))


def test_links_follow_the_web_listener_unless_set(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[web]\nport = 9090\n")
    assert load_settings(str(path)).bot.base_url == "http://127.0.0.1:9090"
    path.write_text('[web]\nport = 9090\n[bot]\nbase_url = "https://changes.example.net/"\n')
    assert load_settings(str(path)).bot.base_url == "https://changes.example.net"


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[outgoing]\npassword = "hunter2-smtp"\n[imap]\nusername = "u"\n'
        'password = "hunter2-imap"\n[web]\nsecret_key = "hunter2-web-key-0123"\n'
    )
    text = repr(load_settings(str(path)))
    assert "hunter2" not in text
    path.write_text('[outgoing]\npassword = "hunter2-smtp"\nport = "x"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(str(path))
    assert "hunter2" not in str(error.value)
