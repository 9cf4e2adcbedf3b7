"""URLs: ``POST /api/say``."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [path("api/say", views.say, name="say")]
