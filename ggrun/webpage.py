"""The chat page at ``/``: static HTML, CSS and JS from ``ggrun/web/``, served by ggrun itself.

No build step, no CDN, nothing fetched from elsewhere: the page (``web/app.js``) talks to
this server's own OpenAI API on the same origin and keeps conversations in the browser's
localStorage. The files are read once, when the routes are built, and served from memory
with a Content-Security-Policy that lets the page run only its own script and style
files and connect only to this origin, so a reply that somehow reached the DOM as HTML
still could not run script or load anything. The page itself never parses model text as
HTML. The assets need no API key (they hold no secrets); the API calls they make do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # always revalidate (cheap: the ETag answers 304)
}
# URL path -> (file in ggrun/web/, media type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
    "/web/icon.svg": ("icon.svg", "image/svg+xml"),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def load(cls, name: str, media_type: str) -> Asset:
        body = (resources.files("ggrun") / "web" / name).read_bytes()
        return cls(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    async def respond(self, request: Any) -> Any:
        from starlette.responses import Response

        headers = {**HEADERS, "ETag": self.etag}
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def routes(server: object) -> list[Any]:
    """Starlette routes for the page and its assets (GET and HEAD).

    ``server`` is the :class:`~ggrun.server.Server` they are mounted on; the page needs
    nothing from it but its HTTP API, so it is unused for now.
    """
    from starlette.routing import Route

    return [
        Route(path, Asset.load(name, media_type).respond, methods=["GET"])
        for path, (name, media_type) in ASSETS.items()
    ]
