"""Where ``aicp gateway`` keeps its controller key by default: the key directory every role uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicp.cli import gateway as gateway_cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AICP_KEY_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return tmp_path


def test_the_gateway_key_is_in_the_key_directory_of_every_role(home: Path) -> None:
    assert gateway_cli.default_key_file() == home / ".config" / "aicp" / "keys" / "gateway.key"


def test_a_key_at_the_old_place_is_kept_until_one_exists_at_the_new(home: Path) -> None:
    legacy = home / ".aicp" / "keys" / "gateway.key"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x")
    assert gateway_cli.default_key_file() == legacy
    new = home / ".config" / "aicp" / "keys" / "gateway.key"
    new.parent.mkdir(parents=True)
    new.write_bytes(b"y")
    assert gateway_cli.default_key_file() == new


def test_aicp_key_dir_wins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".aicp" / "keys").mkdir(parents=True)
    (home / ".aicp" / "keys" / "gateway.key").write_bytes(b"x")
    monkeypatch.setenv("AICP_KEY_DIR", str(home / "k"))
    assert gateway_cli.default_key_file() == home / "k" / "gateway.key"
