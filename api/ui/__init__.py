"""The web dashboard at /ui: static HTML, CSS and vanilla JS that call the /v1 API from the browser with
the user's key (kept in sessionStorage), plus plotly.js served from the installed `plotly` package.

Serving it costs the API only static file reads: no page touches the database server-side, and the
browser caches the chart library (it changes only with the installed package).
"""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

UI_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
# A day: the file is versioned by the installed package, so a stale copy is at worst a day old.
PLOTLY_CACHE_CONTROL = "public, max-age=86400"


def mount_ui(app: FastAPI) -> None:
    """Adds GET /ui/vendor/plotly.min.js and the static pages under /ui/ (index.html at /ui/)."""

    @app.get(f"{UI_PATH}/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(
            PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": PLOTLY_CACHE_CONTROL}
        )

    app.mount(UI_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="ui")
