"""Find wall-clock assertions in test code (run by ``tests/test__sourcecode.py``).

The default test run must not assert on measured time: on a loaded 2-core runner any
bound is wrong now and then, and the suite fails somebody's good work at random. This
scanner reads the test sources' syntax trees (not their text: strings, comments and
docstrings never match) and reports

* an ``assert`` (or ``self.assertLess`` & co., or ``if ...: pytest.fail(...)``) comparing a
  clock reading against anything: ``time.perf_counter``/``time.time``/``time.monotonic``/
  ``time.process_time``/``thread_time``/``clock_gettime`` (and their ``_ns`` forms),
  ``timeit.default_timer``, an event loop's ``loop.time()``, names bound to those clocks
  (``clock = time.perf_counter``), local functions returning them, and every variable
  computed from a reading (``t0``, ``elapsed = clock() - t0``, ``ok = elapsed < 1``);
* a timing fixture (pytest-benchmark's ``benchmark``) requested by a test or fixture;
* a hypothesis ``deadline`` other than ``None`` (a per-example wall-clock assertion).

Allowed: code under ``@pytest.mark.slow`` (a function, its class, or the module's
``pytestmark``), which runs only with ``-m slow``; and a *generous* bound, 10 s or more,
which is a deadlock guard on a wait, not a measurement: ``assert time.monotonic() <
deadline`` with ``deadline = time.monotonic() + 60`` (the seconds may be a literal, a
module constant or a parameter's default; a deadline built from a caller's argument counts
as a wait helper's guard), or ``elapsed < 30``. Waiting with a clock is fine too: a
``while time.monotonic() < deadline:`` loop is a bound on a wait, not an assertion.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ADVICE", "Finding", "scan_paths", "scan_source"]

_CLOCK_FUNCS = {
    "time": {
        f"{name}{suffix}"
        for name in (
            "time",
            "monotonic",
            "perf_counter",
            "process_time",
            "thread_time",
            "clock_gettime",
        )
        for suffix in ("", "_ns")
    },
    "timeit": {"default_timer"},
}
_LOOP_GETTERS = {"get_running_loop", "get_event_loop", "new_event_loop"}
_TIMING_FIXTURES = {"benchmark", "benchmark_weave", "aio_benchmark"}
_ASSERT_METHODS = {
    "assertLess",
    "assertLessEqual",
    "assertGreater",
    "assertGreaterEqual",
    "assertAlmostEqual",
    "assertEqual",
}
_NUMERIC = {"abs", "float", "int", "max", "min", "round", "sum", "sorted"}
_NUMERIC_MODULES = {"math", "statistics", "np", "numpy"}
_NEW_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
#: Seconds from which a bound on a clock reading is a deadlock guard, not a measurement.
GENEROUS = 10.0
_UNKNOWN = float("inf")
_ARITHMETIC: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}  # a deadline from a caller's argument: the caller picks the bound

ADVICE = """\
The default test run asserts no wall-clock time (issue 12): on a loaded CI machine any
time bound fails good work at random. For each finding, do one of:
  * assert on what happened, not how long it took: count operations (calls, rounds,
    samples), or count instructions (`engine bench --instructions`, callgrind);
  * inject or fake the clock: the `fake_clock(module)` fixture (tests/_clock.py) moves
    `time.time()`/`time.monotonic()` of that module; `clock.advance(61)` expires a TTL;
  * wait for the event instead of sleeping: `wait_until(pred)` / `await until(pred)`
    (tests/_wait.py) with their generous default bound, then assert on the outcome;
  * keep the wall-clock variant, but behind `@pytest.mark.slow` (or the module's
    `pytestmark = pytest.mark.slow`; runs with `make test-slow`), or move it to
    benches/ where it is reported as a ratio against a peer measured in the same run."""


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}: {self.code}"


def _is_slow_marker(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    if not (isinstance(node, ast.Attribute) and node.attr == "slow"):
        return False
    return _dotted(node.value) in ("pytest.mark", "mark")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _module_is_slow(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                value = stmt.value
                marks = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
                if any(m is not None and _is_slow_marker(m) for m in marks):
                    return True
    return False


class _Scope:
    """Names that hold clock readings (``timed``, with the expression bound to each in
    ``values``), clock functions, verdicts, and numeric constants (``consts``)."""

    def __init__(self, parent: _Scope | None = None) -> None:
        self.timed: set[str] = set(parent.timed) if parent else set()
        self.values: dict[str, ast.expr] = dict(parent.values) if parent else {}
        self.clocks: set[str] = set(parent.clocks) if parent else set()
        self.verdicts: set[str] = set(parent.verdicts) if parent else set()
        self.consts: dict[str, float] = dict(parent.consts) if parent else {}


class _Scanner:
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.tree = ast.parse(source, filename=path)
        self.modules: dict[str, str] = {}  # local alias -> "time" / "timeit"
        self.findings: list[Finding] = []

    # -- what is a clock --------------------------------------------------------------

    def _is_clock_ref(self, node: ast.expr, scope: _Scope) -> bool:
        """``time.perf_counter`` (not called), or a name bound to a clock function."""
        if isinstance(node, ast.Name):
            return node.id in scope.clocks
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = self.modules.get(node.value.id)
            return module is not None and node.attr in _CLOCK_FUNCS.get(module, ())
        return False

    def _is_loop(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Call):
            return isinstance(node.func, ast.Attribute | ast.Name) and (
                _dotted(node.func).rsplit(".", 1)[-1] in _LOOP_GETTERS
            )
        name = _dotted(node).rsplit(".", 1)[-1].lower()
        return name.endswith("loop")

    def _is_clock_call(self, node: ast.AST, scope: _Scope) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if self._is_clock_ref(func, scope):
            return True
        return isinstance(func, ast.Attribute) and func.attr == "time" and self._is_loop(func.value)

    def _timed(self, node: ast.AST | None, scope: _Scope) -> bool:
        """Whether ``node`` reads a clock or uses a value computed from a reading.

        Arithmetic carries the taint; a call carries it only for the numeric builtins
        (``max(clock() - t0, 0)``): ``spin(time.perf_counter() + 1)`` returns no reading.
        """
        if node is None or isinstance(node, _NEW_SCOPES):
            return False
        if self._is_clock_call(node, scope):
            return True
        if isinstance(node, ast.Name | ast.Attribute) and _dotted(node) in scope.timed:
            return True
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name not in _NUMERIC and name.split(".", 1)[0] not in _NUMERIC_MODULES:
                return False
            return any(self._timed(a, scope) for a in (*node.args, *node.keywords))
        return any(self._timed(child, scope) for child in ast.iter_child_nodes(node))

    def _timed_compare(self, node: ast.AST, scope: _Scope) -> ast.Compare | None:
        """The first comparison in ``node`` of a clock reading against a tight bound."""
        for sub in _walk_same_scope(node):
            if (
                isinstance(sub, ast.Compare)
                and any(self._timed(x, scope) for x in (sub.left, *sub.comparators))
                and not self._generous(sub, scope)
            ):
                return sub
        return None

    # -- generous bounds: deadlock guards on waits --------------------------------------

    def _const(self, node: ast.expr, scope: _Scope) -> float | None:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return scope.consts.get(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            a, b = self._const(node.left, scope), self._const(node.right, scope)
            if a is not None and b is not None:
                return _ARITHMETIC[type(node.op)](a, b)
        return None

    def _bound_value(self, node: ast.expr, scope: _Scope) -> ast.expr:
        """What a timed name was bound to (the node itself otherwise)."""
        if isinstance(node, ast.Name | ast.Attribute):
            return scope.values.get(_dotted(node), node)
        return node

    def _is_now(self, node: ast.expr, scope: _Scope) -> bool:
        """A bare clock reading: ``time.monotonic()``, or ``now`` bound to one."""
        return self._is_clock_call(self._bound_value(node, scope), scope)

    def _slack(self, node: ast.expr, scope: _Scope) -> float | None:
        """For ``deadline`` bound to ``clock() + X``: X (``_UNKNOWN`` if not a constant)."""
        value = self._bound_value(node, scope)
        if value is node or not isinstance(value, ast.BinOp) or not isinstance(value.op, ast.Add):
            return None
        for now, extra in ((value.left, value.right), (value.right, value.left)):
            if self._is_now(now, scope) and not self._timed(extra, scope):
                got = self._const(extra, scope)
                return _UNKNOWN if got is None else got
        return None

    def _elapsed(self, node: ast.expr, scope: _Scope) -> bool:
        """``clock() - t0`` (with ``t0`` a reading), or a name bound to it."""
        value = self._bound_value(node, scope)
        return (
            isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Sub)
            and self._is_now(value.left, scope)
            and self._is_now(value.right, scope)
        )

    def _generous(self, cmp: ast.Compare, scope: _Scope) -> bool:
        """``now < deadline`` or ``elapsed < C`` with a bound of ``GENEROUS`` s or more."""
        if len(cmp.comparators) != 1:
            return False
        a, b = cmp.left, cmp.comparators[0]
        for near, far in ((a, b), (b, a)):
            if self._is_now(near, scope):
                slack = self._slack(far, scope)
                if slack is not None:
                    return slack >= GENEROUS
            if self._elapsed(near, scope):
                bound = self._const(far, scope)
                if bound is not None:
                    return bound >= GENEROUS
        return False

    # -- scopes -----------------------------------------------------------------------

    def run(self) -> list[Finding]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in _CLOCK_FUNCS:
                        self.modules[alias.asname or alias.name] = alias.name
        root = _Scope()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module in _CLOCK_FUNCS:
                for alias in node.names:
                    if alias.name in _CLOCK_FUNCS[node.module]:
                        root.clocks.add(alias.asname or alias.name)
        self._scope(self.tree.body, root, slow=_module_is_slow(self.tree))
        return self.findings

    def _learn(self, body: list[ast.stmt], scope: _Scope) -> None:
        """Grow ``scope`` from this block's bindings until nothing new is learnt."""
        binds: list[tuple[list[ast.expr], ast.expr]] = []
        funcs: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        for stmt in body:
            for node in _walk_same_scope(stmt):
                if isinstance(node, ast.Assign):
                    binds.append((node.targets, node.value))
                elif (
                    isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr)
                    and node.value is not None
                ):
                    binds.append(([node.target], node.value))
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                funcs.append(stmt)
        changed = True
        while changed:
            changed = False
            for targets, value in binds:
                names = {_dotted(n) for t in targets for n in _target_names(t)} - {""}
                if self._is_clock_ref(value, scope) or (
                    isinstance(value, ast.Lambda) and self._timed(value.body, scope)
                ):
                    new = names - scope.clocks
                    scope.clocks |= new
                elif self._timed(value, scope):
                    new = names - scope.timed
                    scope.timed |= new
                    for name in names:
                        scope.values[name] = value
                    if self._timed_compare(value, scope) is not None:
                        scope.verdicts |= names
                elif len(targets) == 1 and isinstance(targets[0], ast.Name):
                    const = self._const(value, scope)
                    if const is None or targets[0].id in scope.consts:
                        continue
                    scope.consts[targets[0].id] = const
                    new = {targets[0].id}
                else:
                    continue
                changed = changed or bool(new)
            for fn in funcs:  # def now(): return time.monotonic() - t0
                if fn.name in scope.clocks:
                    continue
                inner = _Scope(scope)
                self._learn(fn.body, inner)
                if any(
                    isinstance(n, ast.Return) and self._timed(n.value, inner)
                    for n in _walk_same_scope(fn, into=True)
                ):
                    scope.clocks.add(fn.name)
                    changed = True

    def _scope(
        self,
        body: list[ast.stmt],
        parent: _Scope,
        *,
        slow: bool,
        fn: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
    ) -> None:
        scope = _Scope(parent)
        if fn is not None:  # def wait(..., timeout=30.0): a parameter's default is a constant
            args = fn.args
            positional = [*args.posonlyargs, *args.args]
            with_default = positional[len(positional) - len(args.defaults) :]
            pairs = [
                *zip(with_default, args.defaults, strict=True),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            for arg, default in pairs:
                const = None if default is None else self._const(default, scope)
                if const is not None:
                    scope.consts[arg.arg] = const
        self._learn(body, scope)
        for stmt in body:
            for node in _walk_same_scope(stmt):
                if not slow:
                    self._check(node, scope)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    marked = slow or any(_is_slow_marker(d) for d in node.decorator_list)
                    if isinstance(node, ast.ClassDef):
                        self._scope(node.body, scope, slow=marked)
                    else:
                        if not marked:
                            self._check_fixtures(node)
                        self._scope(node.body, scope, slow=marked, fn=node)
                    if not marked:  # @settings(deadline=...) and friends
                        for dec in node.decorator_list:
                            for sub in _walk_same_scope(dec):
                                self._check(sub, scope)

    # -- the checks -------------------------------------------------------------------

    def _report(self, node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", 0)
        code = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        self.findings.append(Finding(self.path, line, what, code))

    def _check(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, ast.Assert):
            if self._timed_compare(node.test, scope) is not None or any(
                isinstance(n, ast.Name) and n.id in scope.verdicts
                for n in _walk_same_scope(node.test)
            ):
                self._report(node, "assert on wall-clock time")
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in _ASSERT_METHODS
                and any(self._timed(a, scope) for a in node.args)
            ):
                self._report(node, "assert on wall-clock time")
            elif _dotted(func).rsplit(".", 1)[-1] in ("settings", "register_profile"):
                for kw in node.keywords:
                    if kw.arg == "deadline" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is None
                    ):
                        self._report(kw.value, "hypothesis deadline (a per-example time limit)")
        elif (
            isinstance(node, ast.If)
            and self._timed_compare(node.test, scope) is not None
            and any(_fails(stmt) for stmt in node.body)
        ):
            self._report(node, "test fails on wall-clock time")

    def _check_fixtures(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        args = fn.args
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
            if arg.arg in _TIMING_FIXTURES:
                self._report(arg, f"timing fixture `{arg.arg}`")
        for dec in fn.decorator_list:
            if isinstance(dec, ast.Call) and _dotted(dec.func).endswith("mark.usefixtures"):
                for a in dec.args:
                    if isinstance(a, ast.Constant) and a.value in _TIMING_FIXTURES:
                        self._report(dec, f"timing fixture `{a.value}`")


def _fails(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return _dotted(exc) == "AssertionError"
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return _dotted(stmt.value.func) in ("pytest.fail", "fail")
    return isinstance(stmt, ast.Assert)


def _target_names(target: ast.expr) -> Iterator[ast.expr]:
    if isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)
    elif isinstance(target, ast.Name | ast.Attribute):
        yield target


def _walk_same_scope(node: ast.AST, *, into: bool = False) -> Iterator[ast.AST]:
    """``ast.walk`` that yields nested functions, classes and lambdas but not their insides.

    ``into=True`` starts inside ``node`` itself (a function's own body).
    """
    todo = list(ast.iter_child_nodes(node)) if into else [node]
    while todo:
        sub = todo.pop()
        yield sub
        if not isinstance(sub, _NEW_SCOPES):
            todo.extend(ast.iter_child_nodes(sub))


def scan_source(source: str, path: str = "<test>") -> list[Finding]:
    """Wall-clock assertions in one module's source, in line order."""
    return sorted(_Scanner(path, source).run(), key=lambda f: (f.line, f.what))


def scan_paths(paths: Iterable[Path], root: Path) -> list[Finding]:
    """Wall-clock assertions in every ``*.py`` under ``paths``."""
    found: list[Finding] = []
    for base in paths:
        for file in sorted(base.rglob("*.py")):
            found += scan_source(file.read_text(), str(file.relative_to(root)))
    return found
