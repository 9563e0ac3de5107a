"""The /ui mount: static pages and plotly.js served without a key (they hold no tenant data), every page's
script present and local (nothing fetched from the network), and /v1 still needing its key."""

from __future__ import annotations

import re
from pathlib import Path

import plotly
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.services

STATIC = Path(__file__).resolve().parents[2] / "api" / "ui" / "static"


def test_ui_serves_the_sign_in_page_and_its_local_scripts(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "vendor/plotly.min.js" in sources and "app.js" in sources
    for source in sources:
        assert not source.startswith(("http:", "https:", "//")), source
        assert client.get(f"/ui/{source}").status_code == 200, source


def test_every_module_import_resolves_to_a_served_file(client: TestClient) -> None:
    for script in STATIC.glob("*.js"):
        for imported in re.findall(r'from "\./([^"]+)"', script.read_text()):
            response = client.get(f"/ui/{imported}")
            assert response.status_code == 200, (script.name, imported)
            assert "javascript" in response.headers["content-type"]


def test_plotly_comes_from_the_installed_package_and_is_cacheable(client: TestClient) -> None:
    response = client.get("/ui/vendor/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "max-age" in response.headers["cache-control"]
    installed = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert response.content == installed.read_bytes()


def test_ui_needs_no_key_but_v1_still_does(client: TestClient) -> None:
    assert client.get("/ui/app.js").status_code == 200
    assert client.get("/v1/fine_tuning/jobs").status_code == 401
    assert client.get("/ui/missing.js").status_code == 404
    assert "/ui/vendor/plotly.min.js" not in client.get("/openapi.json").json()["paths"]
