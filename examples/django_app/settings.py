"""Minimal settings: no database, no apps, one URL module, sessions in signed cookies.

The environment configures the avatars (see ``examples/visitors.py``); with no
``AVATAR_IM_URL`` an embedded reference server is used.
"""

from __future__ import annotations

import os

# Set DJANGO_SECRET_KEY in production; this default is for local runs only.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-local-development-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
# The visitor id lives in a signed cookie: no database needed.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_HTTPONLY = True
USE_TZ = True
TIME_ZONE = "UTC"
