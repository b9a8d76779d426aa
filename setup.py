"""Build the native hot path: every ``ext/_<name>.pyx`` becomes ``engine._native._<name>``.

Switches (environment):
  ENGINE_DEBUG=1     annotate=True (HTML beside the .pyx), line tracing, ENGINE_DEBUG C macro = 1
  ENGINE_SANITIZE=1  compile and link with -fsanitize=address,undefined
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
NATIVE: dict[str, str] = {
    f"engine._native.{p.stem}": str(p.relative_to(ROOT)) for p in sorted((ROOT / "ext").glob("_*.pyx"))
}
DEBUG = os.environ.get("ENGINE_DEBUG") == "1"
SANITIZE = os.environ.get("ENGINE_SANITIZE") == "1"


def _extensions() -> list[Extension]:
    macros = [("ENGINE_DEBUG", "1" if DEBUG else "0"), ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
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


class BuildExt(build_ext):
    """Cythonize inside build_ext so sdists ship .pyx and never generated .c."""

    def finalize_options(self) -> None:
        from Cython.Build import cythonize
        from Cython.Compiler import Options

        Options.warning_errors = True  # Cython's own warnings fail the build
        directives = {"language_level": 3, "embedsignature": True}
        if DEBUG:
            directives.update(linetrace=True, binding=True)
        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            include_path=[str(ROOT), str(ROOT / "bindings"), str(ROOT / "ext" / "include")],
            annotate=DEBUG,
            quiet=True,
            nthreads=0,
        )
        super().finalize_options()


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
