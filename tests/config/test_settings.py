"""Settings from ``APP_*_FILE``: how a running service learns a new key on reload."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from config import ConfigError, load_settings

BASE = {"APP_DATABASE_URL": "postgresql://owner:pw@127.0.0.1:5432/tenantpool"}


def test_settings_keyring_from_files_one_key_per_line(tmp_path: Path) -> None:
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    (tmp_path / "keys").write_text(f"k1:{first}\nk2:{second}\n")
    (tmp_path / "active").write_text("k2\n")
    settings = load_settings(
        {
            **BASE,
            "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys"),
            "APP_ENCRYPTION_ACTIVE_KEY_FILE": str(tmp_path / "active"),
        }
    )
    assert settings.encryption_keys == {"k1": bytes.fromhex(first), "k2": bytes.fromhex(second)}
    assert settings.encryption_active_key == "k2"


def test_settings_file_and_variable_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t" * 40)
    env = {
        **BASE,
        "APP_ENCRYPTION_KEYS": f"k1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
        "APP_ADMIN_TOKEN": "u" * 40,
        "APP_ADMIN_TOKEN_FILE": str(tmp_path / "token"),
    }
    with pytest.raises(ConfigError, match=r"^APP_ADMIN_TOKEN: set either"):
        load_settings(env)


def test_settings_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **BASE,
        "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "missing"),
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith("APP_ENCRYPTION_KEYS_FILE: cannot read ")
    assert "\n" not in message


def test_settings_bad_key_in_a_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k1:not-hex\n")
    env = {
        **BASE,
        "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys"),
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
    }
    with pytest.raises(ConfigError, match=r"^APP_ENCRYPTION_KEYS: key 'k1' must be 64 hex"):
        load_settings(env)
