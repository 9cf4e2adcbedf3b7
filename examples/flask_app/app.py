"""The Flask example: a page to talk to the avatar and the JSON view behind it.

Run it from the repository root (``pip install -e '.[server,examples]'`` first)::

    flask --app examples.flask_app run            # an embedded reference server
    AVATAR_IM_URL=ws://127.0.0.1:8765/ws flask --app examples.flask_app run

then open http://127.0.0.1:5000/ or ``curl -X POST -H 'Content-Type: application/json'
-d '{"text": "hello"}' http://127.0.0.1:5000/api/say``.

Every view shares one client per process (:class:`~examples.shared_client.SharedClient`),
made on the first request and closed at exit.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from avatar_im import AvatarIMError, InvalidArgumentError

from ..shared_client import ReplyTimeout, SharedClient

__all__ = ["REPLY_TIMEOUT", "create_app"]

#: Seconds a request waits for the avatar's reply.
REPLY_TIMEOUT = 10.0
#: The longest text a person may send.
MAX_TEXT = 2000


def create_app(shared: SharedClient | None = None) -> Flask:
    """The app; *shared* defaults to one configured from ``AVATAR_IM_*``, closed at exit."""
    app = Flask(__name__)
    if shared is None:
        shared = SharedClient.from_env(output_mode="audio")
        atexit.register(shared.close)
    avatar = shared
    app.extensions["avatar_im"] = avatar

    @app.get("/")
    def index() -> ResponseReturnValue:
        return render_template("index.html")

    @app.post("/api/say")
    def say() -> ResponseReturnValue:
        """Send ``{"text": ...}`` to the avatar; answer ``{"reply": text, "content": {...}}``."""
        data: Any = request.get_json(silent=True)
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            return jsonify(error='send a JSON object like {"text": "hello"}'), 400
        if len(text) > MAX_TEXT:
            return jsonify(error=f"text is longer than {MAX_TEXT} characters"), 400
        try:
            content = avatar.ask(text.strip(), timeout=REPLY_TIMEOUT)
        except InvalidArgumentError as exc:
            return jsonify(error=str(exc)), 400
        except ReplyTimeout:
            return jsonify(error="the avatar did not answer in time"), 504
        except AvatarIMError as exc:
            app.logger.warning("avatar error: %s", exc)
            return jsonify(error="the avatar service is unavailable"), 502
        return jsonify(reply=content.get("text"), content=content)

    return app
