"""The public surface and the sans-I/O rule, checked (as httpx checks its exports)."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

import avatar_im

#: Modules that must stay pure: no threads, sockets, WebSocket library or clock.
PURE_MODULES = [
    "avatar_im.backoff",
    "avatar_im.exceptions",
    "avatar_im.frames",
    "avatar_im.ids",
    "avatar_im.options",
    "avatar_im.packets",
    "avatar_im.protocol",
    "avatar_im.urls",
    "avatar_im.server.responder",
    "avatar_im.server.state",
]
FORBIDDEN_IMPORTS = {
    "threading",
    "socket",
    "select",
    "selectors",
    "websocket",
    "websockets",
    "time",
    "asyncio",
}


def test_exported_names_are_sorted_and_exist() -> None:
    """avatar_im.__all__ is sorted (upper-case constants first) and every name resolves."""
    names = avatar_im.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n.startswith("_"), n))
    for name in names:
        assert hasattr(avatar_im, name), name


def test_every_exception_derives_from_the_root() -> None:
    """Every exported exception is an AvatarIMError."""
    for name in avatar_im.__all__:
        value = getattr(avatar_im, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, avatar_im.AvatarIMError), name


@pytest.mark.parametrize("module_name", PURE_MODULES)
def test_pure_modules_do_no_io(module_name: str) -> None:
    """The protocol core imports no threading, sockets, WebSocket library or clock."""
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS, imported & FORBIDDEN_IMPORTS


@pytest.mark.parametrize("module_name", [*PURE_MODULES, "avatar_im.client", "avatar_im.connection"])
def test_every_module_declares_all(module_name: str) -> None:
    """Every library module says what it exports."""
    assert isinstance(importlib.import_module(module_name).__all__, list)


def test_import_avatar_im_loads_no_networking_until_used() -> None:
    """`import avatar_im` is cheap: the client and websocket-client load on first use."""
    import subprocess
    import sys

    code = (
        "import sys, avatar_im\n"
        "print('websocket' in sys.modules, 'avatar_im.client' in sys.modules)\n"
        "avatar_im.AvatarIM\n"
        "print('websocket' in sys.modules, 'avatar_im.client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"]
