"""The Flask app of ``mil.review``: one page, a small JSON API, images by position.

    app = create_app(folder, "anna")                 # loopback: Host header checked
    app = create_app(folder, "anna", token="...")    # any other host: every request needs it

Routes: ``/`` the page, ``/static/...`` its script and style (from the package),
``/api/state`` the rater's cells in their order with their answers, ``POST /api/answer``
``{"i": position, "label": ...}``, ``POST /api/undo``, ``/img/<i>``, ``/thumb/<i>`` and
``/img/<i>/n/<k>`` the images of position i (cell, gallery thumbnail, neighbour k). Requests name positions in the audit's own list, never a path.
POSTs must be JSON from the page's own origin.
"""

from __future__ import annotations

import hmac
import io
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request, send_file

from mil.blast.folder import ANSWERS
from mil.review.answers import RaterAnswers
from mil.review.sample import ReviewCell, load_sample, rater_order

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "cellmil_review"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; "
                               "style-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY", "Cache-Control": "no-store",
}


def _hostname(host: str) -> str:
    """The name part of a Host header: ``[::1]:8765`` -> ``[::1]``, ``a:80`` -> ``a``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


def _png(path: Path, size: int) -> bytes | None:
    """``path`` decoded and re-encoded as RGB PNG (largest side ``size``); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
    except (OSError, ValueError):
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def create_app(folder: Path, rater: str, *, token: str | None = None,
               answers: RaterAnswers | None = None) -> Flask:
    """The review app of ``rater`` over the audit ``folder``."""
    cells = rater_order(load_sample(folder), rater)
    answers = answers or RaterAnswers(Path(folder), rater, {c.key for c in cells})
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["RATER_ANSWERS"] = answers

    @lru_cache(maxsize=512)
    def cell_png(i: int, size: int) -> bytes | None:
        c = cells[i]
        big = _png(c.source, size) if c.source is not None else None
        return big or (_png(c.image, size) if c.image.is_file() else None)

    def cell_at(i: int) -> ReviewCell:
        if not 0 <= i < len(cells):
            abort(404)
        return cells[i]

    def state() -> dict[str, Any]:
        items = [{"i": i, "slide_id": c.slide_id, "cell_id": c.cell_id,
                  "label": answers.label(c.key), "neighbours": len(c.neighbours)}
                 for i, c in enumerate(cells)]
        start = next((it["i"] for it in items if it["label"] is None), len(cells) - 1)
        return {"rater": rater, "n": len(cells), "answered": len(answers.answers),
                "start": start, "labels": list(ANSWERS), "cells": items,
                "file": f"raters/{answers.path.name}"}

    @app.before_request
    def guard() -> Response | None:
        if token is not None:
            given = request.args.get("token") or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                abort(403)
            if request.args.get("token") and request.method == "GET" and request.path == "/":
                resp = redirect("/")  # drop the token from the address bar
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
                return resp
        elif _hostname(request.host) not in LOOPBACK_NAMES:
            abort(403)  # a loopback server answers loopback names only (DNS rebinding)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if not request.is_json or (origin and origin.split("://", 1)[-1] != request.host):
                abort(403)
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        return resp

    @app.get("/")
    def page() -> Response:
        return send_file(STATIC / "index.html", mimetype="text/html")

    @app.get("/api/state")
    def get_state() -> Response:
        return jsonify(state())

    @app.post("/api/answer")
    def post_answer() -> Response:
        body = request.get_json(silent=True) or {}
        i, label = body.get("i"), body.get("label")
        if not isinstance(i, int) or label not in ANSWERS:
            abort(400)
        answers.set(cell_at(i).key, label)
        return jsonify({"i": i, "label": label, "answered": len(answers.answers)})

    @app.post("/api/undo")
    def post_undo() -> Response:
        done = answers.undo()
        pos = {c.key: i for i, c in enumerate(cells)}
        return jsonify({"i": pos[done[0]] if done else None, "label": done[1] if done else None,
                        "answered": len(answers.answers)})

    def png_response(i: int, size: int) -> Response:
        cell_at(i)
        data = cell_png(i, size)
        if data is None:
            abort(404)
        return send_file(io.BytesIO(data), mimetype="image/png")

    @app.get("/img/<int:i>")
    def image(i: int) -> Response:
        return png_response(i, 768)

    @app.get("/thumb/<int:i>")
    def thumb(i: int) -> Response:
        return png_response(i, 160)

    @app.get("/img/<int:i>/n/<int:k>")
    def neighbour(i: int, k: int) -> Response:
        near = cell_at(i).neighbours
        if not 1 <= k <= len(near):
            abort(404)
        return send_file(near[k - 1], mimetype="image/png")

    return app
