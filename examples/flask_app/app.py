"""The Flask example: a page to talk to the avatar and the JSON view behind it.

Run it from the repository root (``pip install -e '.[server,examples]'`` first)::

    flask --app examples.flask_app run            # an embedded reference server
    AVATAR_IM_URL=ws://127.0.0.1:8765/ws flask --app examples.flask_app run

then open http://127.0.0.1:5000/ or ``curl -X POST -H 'Content-Type: application/json'
-d '{"text": "hello"}' http://127.0.0.1:5000/api/say``.

Each browser session gets an avatar of its own (:class:`~examples.visitors.VisitorAvatars`):
made on its first message, closed after ten idle minutes, when 100 visitors are
connected (the one idle longest first), and at exit.  The visitor id travels in
Flask's signed session cookie; set ``FLASK_SECRET_KEY`` in production.

With ``AVATAR_IM_REDIS`` set, the avatars are held by session hosts
(``avatar-im host --redis URL``) and reached through the Redis relay
(:class:`~examples.relay_visitors.RelayVisitors`): a visitor keeps one avatar
whichever worker or machine serves its request (``docs/many-workers.md``)::

    AVATAR_IM_REDIS=redis://127.0.0.1:6379/0 FLASK_SECRET_KEY=... \
        gunicorn -w 4 --preload 'examples.flask_app:create_app()'
"""

from __future__ import annotations

import atexit
import os
import secrets
import uuid
from typing import Any

from flask import Flask, jsonify, render_template, request, session
from flask.typing import ResponseReturnValue

from avatar_im import AskTimeout, AvatarIMError, InvalidArgumentError

from ..relay_visitors import RelayVisitors
from ..visitors import VisitorAvatars

__all__ = ["REPLY_TIMEOUT", "create_app"]

#: Seconds a request waits for the avatar's reply.
REPLY_TIMEOUT = 10.0
#: The longest text a person may send.
MAX_TEXT = 2000


def create_app(avatars: VisitorAvatars | RelayVisitors | None = None) -> Flask:
    """The app; *avatars* defaults to one configured from the environment, closed at exit.

    The default is :class:`RelayVisitors` when ``AVATAR_IM_REDIS`` is set, else
    :class:`VisitorAvatars`.
    """
    app = Flask(__name__)
    # A random key per process logs visitors out at restart, and differs between workers:
    # set FLASK_SECRET_KEY for a server with several workers.
    app.secret_key = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    if avatars is None:
        if os.environ.get("AVATAR_IM_REDIS"):
            avatars = RelayVisitors.from_env(output_mode="audio")
        else:
            avatars = VisitorAvatars.from_env(output_mode="audio")
        atexit.register(avatars.close)
    avatar = avatars
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
            visitor = session.setdefault("visitor", uuid.uuid4().hex)
            content = avatar.ask(visitor, text.strip(), timeout=REPLY_TIMEOUT)
        except InvalidArgumentError as exc:
            return jsonify(error=str(exc)), 400
        except AskTimeout:
            return jsonify(error="the avatar did not answer in time"), 504
        except AvatarIMError as exc:
            app.logger.warning("avatar error: %s", exc)
            return jsonify(error="the avatar service is unavailable"), 502
        return jsonify(reply=content.get("text"), content=content)

    return app
