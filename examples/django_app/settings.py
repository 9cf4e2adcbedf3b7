"""Minimal settings: no database, no apps, one URL module.

``AVATAR_IM_*`` environment variables configure the avatar client (see
``examples/shared_client.py``); with no ``AVATAR_IM_URL`` an embedded reference
server is used.
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
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TIME_ZONE = "UTC"
