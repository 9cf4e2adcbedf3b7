"""A Flask app that lets a person talk to the avatar; run ``flask --app examples.flask_app run``."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
