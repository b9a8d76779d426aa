"""Build the native hot path: every ``ext/_<name>.pyx`` becomes ``engine._native._<name>``.

Switches (environment):
  ENGINE_DEBUG=1           annotate=True (HTML beside the .pyx), line tracing, ENGINE_DEBUG macro
  ENGINE_SANITIZE=1        compile and link with -fsanitize=address,undefined
  ENGINE_REQUIRE_NATIVE=1  a module that fails to compile fails the build (set in CI and by
                           `make build`); without it the install goes on in pure Python, with
                           a loud warning here (and a NativeFallbackWarning at import time)
  ENGINE_NO_EXTENSIONS=1   build no extension at all (a pure-Python install, on purpose)
  CI=true                  Cython's own warnings are errors
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
NATIVE: dict[str, str] = {
    f"engine._native.{p.stem}": str(p.relative_to(ROOT))
    for p in sorted((ROOT / "ext").glob("_*.pyx"))
}
DEBUG = os.environ.get("ENGINE_DEBUG") == "1"
SANITIZE = os.environ.get("ENGINE_SANITIZE") == "1"
REQUIRE = os.environ.get("ENGINE_REQUIRE_NATIVE", "") not in ("", "0")
SKIP = os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")
CI = os.environ.get("CI", "").lower() in ("1", "true")


def _extensions() -> list[Extension]:
    if SKIP:
        return []
    macros = [
        ("ENGINE_DEBUG", "1" if DEBUG else "0"),
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
    ]
    cflags = ["-O3", "-Wno-unused-function", "-Wno-unreachable-code"]
    ldflags: list[str] = []
    if DEBUG:
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        cflags = ["-O1", "-g"]
    if SANITIZE:
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address,undefined"]
    return [
        Extension(
            name,
            [src],
            include_dirs=["bindings/include", "ext/include"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
        for name, src in NATIVE.items()
    ]


def _warn(failed: dict[str, str]) -> None:
    bar = "*" * 78
    lines = [
        bar,
        "agent-engine: these compiled modules could not be built:",
        *(f"  engine._native.{name}: {why}" for name, why in failed.items()),
        "The engine is installed WITHOUT them and runs their pure-Python twins, several times",
        "slower. Install a C compiler and the Python headers, then reinstall; set",
        "ENGINE_REQUIRE_NATIVE=1 to make this an error instead.",
        bar,
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


class BuildExt(build_ext):
    """Cythonize inside build_ext so sdists ship .pyx and never generated .c; a module that
    fails (Cython or the C compiler) is left out with a loud warning unless required."""

    def finalize_options(self) -> None:
        self.failed: dict[str, str] = {}
        try:
            from Cython.Build import cythonize
            from Cython.Compiler import Options

            Options.warning_errors = CI  # Cython's own warnings fail CI builds only
            directives = {"language_level": 3, "embedsignature": True}
            if DEBUG:
                directives.update(linetrace=True, binding=True)
            self.distribution.ext_modules = cythonize(
                self.distribution.ext_modules or [],
                compiler_directives=directives,
                include_path=[str(ROOT), str(ROOT / "bindings"), str(ROOT / "ext" / "include")],
                annotate=DEBUG,
                quiet=True,
                nthreads=0,
            )
        except Exception as exc:  # Cython missing or a .pyx it cannot translate
            if REQUIRE or not self.distribution.ext_modules:
                raise
            self.failed = {
                e.name.rsplit(".", 1)[-1]: _why(exc) for e in self.distribution.ext_modules
            }
            self.distribution.ext_modules = []
        super().finalize_options()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, a missing compiler...
            if REQUIRE:
                raise
            self.failed[ext.name.rsplit(".", 1)[-1]] = _why(exc)
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)  # no stale module

    def run(self) -> None:
        super().run()
        if self.failed:
            _warn(self.failed)

    def get_outputs(self) -> list[str]:
        """What goes into the wheel: the modules that were built."""
        return [p for p in super().get_outputs() if os.path.exists(p)]

    def copy_extensions_to_source(self) -> None:
        """``--inplace``: copy only the modules that were built."""
        for ext in list(self.extensions):
            if ext.name.rsplit(".", 1)[-1] in self.failed:
                self.extensions.remove(ext)
        super().copy_extensions_to_source()


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
