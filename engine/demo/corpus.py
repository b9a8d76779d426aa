"""The demo's corpus: this repository's ``docs/`` and the engine's docstrings, in chunks.

Markdown files are cut at their headings, then packed paragraph by paragraph into chunks of
at most :data:`CHUNK_CHARS` characters (a code block stays whole when it fits), each titled
with its file and heading path. Docstrings are read from the installed package's sources
with :mod:`ast` (nothing is imported): one chunk per module, public class and public
function or method, titled with the qualified name and signature; public names also go into
a symbol table the analyst's tool looks up. Installed without the repository (no ``docs/``
beside the package), the corpus is the docstrings alone.

:meth:`Corpus.retriever` embeds every chunk with the default embedder
(:class:`~engine.memory.HashingEmbedder`) into a :class:`~engine.memory.HybridRetriever`
(BM25 + vectors). A corpus saves to and loads from one JSON file, so the mesh nodes read
the demo's corpus instead of parsing the sources again.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import msgspec

__all__ = ["CHUNK_CHARS", "Chunk", "Corpus", "Symbol", "load_corpus", "package_dir", "repo_docs"]

#: Upper bound on one chunk's text.
CHUNK_CHARS: Final = 1_000
_MIN_CHARS: Final = 40
_HEADING = re.compile(r"^(#{1,4})\s+(.*?)\s*#*\s*$")


class Chunk(msgspec.Struct, frozen=True):
    """One retrievable passage: ``id`` (cited as ``[doc:ID]``), where it comes from, text."""

    id: int
    source: str
    title: str
    text: str


class Symbol(msgspec.Struct, frozen=True):
    """A public engine name: qualified ``name``, ``short`` (``Class.method``), signature,
    the first line of its docstring and the chunk holding the docstring."""

    name: str
    short: str
    signature: str
    summary: str
    chunk: int


class Corpus(msgspec.Struct):
    """The chunks and the symbol table; ``docs`` counts the markdown files read."""

    chunks: list[Chunk]
    symbols: list[Symbol]
    docs: int = 0
    modules: int = 0

    def __len__(self) -> int:
        return len(self.chunks)

    def by_id(self) -> dict[int, Chunk]:
        return {c.id: c for c in self.chunks}

    def retriever(self) -> object:
        """A :class:`~engine.memory.HybridRetriever` holding every chunk (default embedder)."""
        from engine.memory import HybridRetriever

        r = HybridRetriever()
        r.add(
            [c.id for c in self.chunks],
            [f"{c.title}\n{c.text}" for c in self.chunks],
            [{"source": c.source, "title": c.title} for c in self.chunks],
        )
        return r

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(msgspec.json.encode(self))

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        return msgspec.json.decode(Path(path).read_bytes(), type=cls)


def package_dir() -> Path:
    """The ``engine`` package's directory (its sources are read for docstrings)."""
    import engine

    return Path(engine.__file__).resolve().parent


def repo_docs() -> Path | None:
    """``docs/`` of the repository this package runs from, or None when installed alone."""
    root = package_dir().parent
    docs = root / "docs"
    if docs.is_dir() and (root / "pyproject.toml").is_file():
        return docs
    return None


def load_corpus(docs: Path | bool | None = True, package: Path | None = None) -> Corpus:
    """Read ``docs`` (True: the repository's, if there is one; None/False: none) and the
    docstrings of ``package`` (default: the installed engine) into a :class:`Corpus`."""
    docs_dir = repo_docs() if docs is True else (docs or None)
    pkg = package if package is not None else package_dir()
    chunks: list[Chunk] = []
    symbols: list[Symbol] = []
    n_docs = n_mods = 0
    if isinstance(docs_dir, Path):
        for path in sorted(docs_dir.glob("*.md")):
            n_docs += 1
            source = f"docs/{path.name}"
            for title, text in _markdown_chunks(path.read_text(encoding="utf-8")):
                chunks.append(Chunk(len(chunks) + 1, source, f"{source} > {title}", text))
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        n_mods += 1
        for name, sig, doc, public in _docstrings(tree, module):
            first = len(chunks) + 1
            for i, piece in enumerate(_pack(_paragraphs(doc))):
                title = f"{name}{sig}" if i == 0 else f"{name}{sig} (cont.)"
                chunks.append(Chunk(len(chunks) + 1, str(rel), title, piece))
            if public and len(chunks) >= first:
                short = ".".join(name.split(".")[-2:]) if "." in name else name
                if short.split(".")[0].islower() and short.count(".") == 1:
                    short = name.rsplit(".", 1)[-1]  # module.function: the function alone
                summary = doc.strip().split("\n", 1)[0][:200]
                symbols.append(Symbol(name, short, sig, summary, first))
    return Corpus(chunks, symbols, n_docs, n_mods)


# -- markdown ------------------------------------------------------------------------------


def _markdown_chunks(text: str) -> Iterator[tuple[str, str]]:
    """(heading path, chunk text) for each chunk of one markdown file."""
    path: list[str] = []
    body: list[str] = []
    fenced = False

    def flush() -> Iterator[tuple[str, str]]:
        title = " > ".join(path[1:] or path) or "(top)"
        for piece in _pack(_paragraphs("\n".join(body))):
            yield title, piece
        body.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            yield from flush()
            level = len(m.group(1))
            del path[level - 1 :]
            path.extend([""] * (level - 1 - len(path)))
            path.append(m.group(2).strip("`"))
            path[:] = [p for p in path if p]
            continue
        if not line.startswith("<!--"):
            body.append(line)
    yield from flush()


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; a fenced code block is one paragraph."""
    out: list[str] = []
    cur: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if cur:
                out.append("\n".join(cur).strip())
                cur = []
            continue
        cur.append(line)
    if cur:
        out.append("\n".join(cur).strip())
    return [p for p in out if p]


def _pack(paragraphs: Iterable[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed into chunks of at most ``limit`` chars (long ones cut at lines)."""
    out: list[str] = []
    cur = ""
    for para in paragraphs:
        for piece in _cut(para, limit):
            if cur and len(cur) + 2 + len(piece) > limit:
                out.append(cur)
                cur = ""
            cur = f"{cur}\n\n{piece}" if cur else piece
    if cur:
        out.append(cur)
    return [c for c in out if len(c) >= _MIN_CHARS]


def _cut(text: str, limit: int) -> Iterator[str]:
    if len(text) <= limit:
        yield text
        return
    cur = ""
    for line in text.splitlines():
        while len(line) > limit:
            if cur:
                yield cur
                cur = ""
            yield line[:limit]
            line = line[limit:]
        if cur and len(cur) + 1 + len(line) > limit:
            yield cur
            cur = ""
        cur = f"{cur}\n{line}" if cur else line
    if cur:
        yield cur


# -- docstrings ----------------------------------------------------------------------------


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str, str, bool]]:
    """(qualified name, signature, docstring, public) of the module and its definitions."""
    doc = ast.get_docstring(tree)
    if doc:
        yield module, "", doc, False
    for node in tree.body:
        yield from _definition(node, module, any(p.startswith("_") for p in module.split(".")))


def _definition(node: ast.stmt, prefix: str, hidden: bool) -> Iterator[tuple[str, str, str, bool]]:
    if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return
    if node.name.startswith("_"):
        return
    name = f"{prefix}.{node.name}"
    doc = ast.get_docstring(node)
    if isinstance(node, ast.ClassDef):
        init = next(
            (
                n
                for n in node.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "__init__"
            ),
            None,
        )
        sig = _signature(init, drop_self=True) if init is not None else ""
        if doc:
            yield name, sig, doc, not hidden
        for child in node.body:
            yield from _definition(child, name, hidden)
        return
    if doc:
        yield name, _signature(node, drop_self=True), doc, not hidden


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef, *, drop_self: bool) -> str:
    args = fn.args
    if drop_self and args.args and args.args[0].arg in ("self", "cls"):
        args = ast.arguments(
            posonlyargs=args.posonlyargs,
            args=args.args[1:],
            vararg=args.vararg,
            kwonlyargs=args.kwonlyargs,
            kw_defaults=args.kw_defaults,
            kwarg=args.kwarg,
            defaults=args.defaults,
        )
    sig = f"({ast.unparse(args)})"
    if fn.returns is not None:
        sig += f" -> {ast.unparse(fn.returns)}"
    return sig if len(sig) <= 300 else sig[:297] + "...)"
