"""Every example in README.md and docs/*.md works.

- ```python blocks run, all blocks of one file in order in one fresh interpreter;
  a block directly preceded by ``<!-- no-run -->`` is shown only (needs a mesh/host).
- ```bash blocks: ``make X`` must be a Makefile target; ``engine …`` lines must parse with
  the real CLI (the commands themselves are exercised by their own tests).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(<!-- no-run -->\s*\n)?```(\w+)[^\n]*\n(.*?)```", re.S)


def _blocks(path: Path, lang: str) -> list[str]:
    out = []
    for m in FENCE.finditer(path.read_text()):
        if m.group(2) == lang and not m.group(1):
            out.append(m.group(3))
    return out


def _shell_lines(path: Path) -> list[str]:
    lines = []
    for block in _blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("$ "):
                line = line[2:]
            if line.startswith(("make ", "engine ")):
                lines.append(line)
    return lines


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p, "python")], ids=_id)
def test_python_examples_run(path: Path, tmp_path: Path) -> None:
    blocks = _blocks(path, "python")
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, f"{path.name} examples failed:\n{res.stdout}\n{res.stderr}"


@pytest.mark.parametrize("path", [p for p in DOCS if _shell_lines(p)], ids=_id)
def test_shell_examples_name_real_commands(path: Path) -> None:
    lines = _shell_lines(path)
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, f"{path.name}: `{line}` names no Makefile target"
        else:
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:  # --help and --version exit 0 once they printed
                if exc.code != 0:
                    pytest.fail(f"{path.name}: `{line}` does not parse ({exc})")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    for target in LINK.findall(path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{_id(path)} links to missing {target}"


USER_PAGES = [p for p in DOCS if "engineering" not in p.parts and p.name != "performance.md"]


@pytest.mark.parametrize("path", USER_PAGES, ids=_id)
def test_user_pages_carry_no_engineering_notes(path: Path) -> None:
    """Issue numbers, machine load and to-do lists belong in docs/engineering/."""
    text = path.read_text()
    for pattern in (r"\bissue \d+", r"(?i)load average", r"(?i)\bto do\b", r"(?i)\btodo\b"):
        assert not re.search(pattern, text), f"{_id(path)} has {pattern!r}"


def test_docs_have_examples_to_check() -> None:
    assert _blocks(ROOT / "README.md", "python"), "the README's embedding example is missing"
    assert sum(len(_blocks(p, "python")) for p in DOCS) >= 10


def test_readme_gives_the_two_setup_commands_first() -> None:
    lines = _shell_lines(ROOT / "README.md")
    assert lines[:2] == ["make demo", "make test"]
