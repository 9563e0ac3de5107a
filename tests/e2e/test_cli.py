"""`lorasp` commands on the embedded default (SQLite under a fresh home), as a user runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lorasp_service.auth import tenant_for_key
from lorasp_service.cli import ensure_default_key
from lorasp_service.db import session_scope
from lorasp_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LORASP_")}
    return dict(env, LORASP_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO_ROOT))


def lorasp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorasp_service.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_key_works_before_the_server_ever_ran(home_env: dict[str, str], tmp_path: Path) -> None:
    done = lorasp(home_env, "admin", "create-key", "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-lorasp-") and " " not in key

    settings = Settings(home=tmp_path / "home")
    with session_scope(settings) as session:
        tenant = tenant_for_key(session, key)
        assert tenant is not None and tenant.name == "acme"


def test_default_key_is_created_once_and_kept_private(home_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert lorasp(home_env, "migrate").returncode == 0

    key = ensure_default_key(settings)
    key_file = settings.home / "default-api-key"
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ensure_default_key(settings) == key  # every start prints the same key

    key_file.write_text("sk-lorasp-not-a-key\n")  # a stale file (e.g. the database was reset)
    replacement = ensure_default_key(settings)
    assert replacement != key
    with session_scope(settings) as session:
        tenant = tenant_for_key(session, replacement)
        assert tenant is not None and tenant.name == settings.default_tenant


def test_unknown_command_fails(home_env: dict[str, str]) -> None:
    done = lorasp(home_env, "admin", "drop-everything")
    assert done.returncode != 0 and "invalid choice" in done.stderr
