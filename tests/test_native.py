"""How the engine finds its compiled modules: required, disabled, or missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import engine
from engine._native import MODULES


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60
    )


def test_missing_module_is_an_import_error_when_native_is_required() -> None:
    res = _python(
        "from engine._native import load\nload('_does_not_exist')", ENGINE_REQUIRE_NATIVE="1"
    )
    assert res.returncode != 0
    assert "NativeUnavailable" in res.stderr and "_does_not_exist is not built" in res.stderr


def test_missing_module_falls_back_when_not_required() -> None:
    res = _python("from engine._native import load\nprint(load('_does_not_exist'))")
    assert res.returncode == 0 and res.stdout.strip() == "None"


def test_no_extensions_disables_every_compiled_module() -> None:
    res = _python(
        "import engine\n"
        "print(engine.HAS_NATIVE, sorted(set(engine.native_info().values()), key=str))",
        ENGINE_NO_EXTENSIONS="1",
        ENGINE_REQUIRE_NATIVE="1",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False [None]"


@pytest.mark.skipif(
    os.environ.get("ENGINE_REQUIRE_NATIVE") != "1", reason="meaningful where native is required"
)
def test_every_shipped_module_is_compiled_when_required() -> None:
    info = engine.native_info()
    assert engine.HAS_NATIVE, info
    for name in MODULES:
        path = info[name]
        assert path is not None and path.endswith(".so"), (name, path)
