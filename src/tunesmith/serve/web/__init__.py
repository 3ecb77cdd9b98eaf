"""The dashboard: server-rendered page shells at ``/`` and ``/ui/...`` whose scripts call the ``/v1`` API.

The pages hold no data and need no key: each page's script reads the key the person entered on the
login page from ``sessionStorage`` and sends it as ``Authorization: Bearer`` to the same API every
client uses, so a page shows the key's organisation's objects only. No cookie is set, so no request
is authorised by the browser on its own and cross-site request forgery has nothing to ride on.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

HERE = Path(__file__).parent
STATIC = (HERE / "static").resolve()

# Inline scripts and style= attributes are refused, and nothing comes from another origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# /ui/NAME -> (its link in the menu, its title); templates/NAME.html loads its script, static/NAME.js.
PAGES = {
    "login": ("Log in", "Log in"),
    "files": ("Files", "Files"),
    "jobs": ("Jobs", "Fine-tuning jobs"),
    "models": ("Models", "Models"),
    "playground": ("Playground", "Playground"),
    "compare": ("Compare", "Compare jobs"),
}


def add_routes(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=HERE / "templates")

    def render(request: Request, name: str, title: str, **context) -> HTMLResponse:
        context = {"title": title, "page": name, "pages": PAGES, **context}
        return templates.TemplateResponse(request, f"{name}.html", context, headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def home():
        return RedirectResponse("/ui/jobs", headers=HEADERS)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False, response_class=HTMLResponse)
    def job_page(request: Request, job_id: str):
        return render(request, "job", "Fine-tuning job", job_id=job_id)

    def page_route(name: str):
        def page(request: Request):
            return render(request, name, PAGES[name][1])

        return page

    for name in PAGES:
        app.get(f"/ui/{name}", include_in_schema=False, response_class=HTMLResponse)(page_route(name))

    # A route, not a StaticFiles mount: the app's 405 handler lists the methods of routes, which a mount lacks.
    @app.get("/ui/static/{path:path}", include_in_schema=False)
    def static(path: str):
        file = (STATIC / path).resolve()
        if not file.is_relative_to(STATIC) or not file.is_file():
            raise HTTPException(404)
        return FileResponse(file, headers=HEADERS)
