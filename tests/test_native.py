"""How the engine finds its compiled modules: required, disabled, or missing."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import pytest

import engine
from engine._native import MODULES
from engine.errors import NativeFallbackWarning, NativeUnavailable


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


def test_missing_module_falls_back_with_one_warning_when_not_required() -> None:
    res = _python(
        "from engine._native import pick\n"
        "for _ in range(3):\n"
        "    print(pick('_does_not_exist', 'X', 'twin'))\n"
        "print(pick('_also_missing', None, 'twin2'))"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:4] == ["(None, 'twin')"] * 3 + ["(None, 'twin2')"]
    warned = [ln for ln in res.stderr.splitlines() if "NativeFallbackWarning" in ln]
    assert len(warned) == 2, res.stderr  # once per missing module
    assert "_does_not_exist is not built" in warned[0] and "25-250x slower" in warned[0]


def test_no_extensions_chooses_the_twins_silently() -> None:
    res = _python(
        "import warnings\nwarnings.simplefilter('error')\n"
        "from engine.routing import Router, RouterC, RouterPy\n"
        "from engine.memory._native import V, VPy\n"
        "print(Router is RouterPy, RouterC is None, V is VPy)",
        ENGINE_NO_EXTENSIONS="1",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True True True"


def test_pick_returns_the_compiled_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine._native as native

    router = native.load("_router")
    if router is None:
        pytest.skip("engine._native._router is not built")
    assert native.pick("_router", "Router", object) == (router.Router, router.Router)
    assert native.pick("_router", None, object) == (router, router)


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


def _fail_import(monkeypatch: pytest.MonkeyPatch, name: str, exc: ImportError) -> None:
    """Make ``engine._native.<name>`` fail to import with ``exc`` (a fresh load cache)."""
    import engine._native as native

    real = importlib.import_module

    def fake(module: str, package: str | None = None) -> ModuleType:
        if module == f"engine._native.{name}":
            raise exc
        return real(module, package)

    monkeypatch.setattr(native.importlib, "import_module", fake)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why", {})
    monkeypatch.setattr(native, "_not_built", set())
    monkeypatch.setattr(native, "_warned", set())
    monkeypatch.delenv("ENGINE_NO_EXTENSIONS", raising=False)
    monkeypatch.delenv("ENGINE_REQUIRE_NATIVE", raising=False)


def test_a_module_that_fails_to_import_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine._native as native

    why = "libzmq functions not found through pyzmq"
    _fail_import(monkeypatch, "_frames", ImportError(why))
    with pytest.warns(NativeFallbackWarning, match="built but failed to import") as caught:
        assert native.pick("_frames", "FrameSocket", "twin") == (None, "twin")  # the fallback...
    assert why in str(caught[0].message)  # ...says why
    assert native.native_info()["_frames"] == f"unavailable: ImportError: {why}"

    _fail_import(monkeypatch, "_frames", ImportError(why))
    monkeypatch.setenv("ENGINE_REQUIRE_NATIVE", "1")
    with pytest.raises(NativeUnavailable) as info:
        native.load("_frames")
    assert "built but failed to import" in str(info.value) and why in str(info.value)
    assert "not built" not in str(info.value)


def test_a_module_that_is_not_built_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine._native as native

    missing = ModuleNotFoundError("No module named x", name="engine._native._router")
    _fail_import(monkeypatch, "_router", missing)
    monkeypatch.setenv("ENGINE_REQUIRE_NATIVE", "1")
    with pytest.raises(NativeUnavailable, match=r"is not built.*make build"):
        native.load("_router")
