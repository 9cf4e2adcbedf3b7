"""The Django view: send the person's text to the avatar and answer its reply as JSON.

Each browser session gets an avatar of its own (:class:`~examples.visitors.VisitorAvatars`),
keyed by a visitor id kept in Django's (signed-cookie) session.
"""

from __future__ import annotations

import atexit
import json
import logging
import uuid

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from avatar_im import AskTimeout, AvatarIMError, InvalidArgumentError

from ..visitors import VisitorAvatars

__all__ = ["REPLY_TIMEOUT", "avatars", "say"]

logger = logging.getLogger(__name__)

#: Seconds a request waits for the avatar's reply.
REPLY_TIMEOUT = 10.0
#: The longest text a person may send.
MAX_TEXT = 2000

#: The visitors' avatars (each made on its visitor's first message).
avatars = VisitorAvatars.from_env(output_mode="audio")
atexit.register(avatars.close)


# A JSON-only API: the Content-Type check below makes a cross-site form post impossible
# (a browser sends application/json cross-site only after a CORS preflight, which fails).
@csrf_exempt
@require_POST
def say(request: HttpRequest) -> HttpResponse:
    """Send ``{"text": ...}`` to the avatar; answer ``{"reply": text, "content": {...}}``."""
    if request.content_type != "application/json":
        return JsonResponse({"error": "send Content-Type: application/json"}, status=415)
    try:
        data = json.loads(request.body)
    except ValueError:
        data = None
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return JsonResponse({"error": 'send a JSON object like {"text": "hello"}'}, status=400)
    if len(text) > MAX_TEXT:
        return JsonResponse({"error": f"text is longer than {MAX_TEXT} characters"}, status=400)
    try:
        visitor = request.session.setdefault("visitor", uuid.uuid4().hex)
        content = avatars.ask(visitor, text.strip(), timeout=REPLY_TIMEOUT)
    except InvalidArgumentError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except AskTimeout:
        return JsonResponse({"error": "the avatar did not answer in time"}, status=504)
    except AvatarIMError as exc:
        logger.warning("avatar error: %s", exc)
        return JsonResponse({"error": "the avatar service is unavailable"}, status=502)
    return JsonResponse({"reply": content.get("text"), "content": content})
