"""Fixtures for the serving engine tests (helpers live in serving_fixtures.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_fixtures import load_tiny

from lorasp_core.serving import ServingEngine


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture
def make_engine() -> Iterator[Callable[..., ServingEngine]]:
    engines: list[ServingEngine] = []

    def factory(**kwargs: Any) -> ServingEngine:
        engine = ServingEngine(load_tiny, **kwargs)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.close()
