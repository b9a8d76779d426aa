"""Router behaviour on both twins, differential state-machine testing, and bad inputs."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from engine import AgentId, RoutingError
from engine.routing import (
    KIND_DIRECT,
    KIND_TOPIC,
    KIND_TYPE,
    MAX_TOPIC_LENGTH,
    Router,
    RouterC,
    RouterPy,
)
from tests.conftest import impl_params

IMPLS = impl_params(RouterPy, RouterC)
R = Callable[..., Any]


@functools.lru_cache(maxsize=8192)
def _oracle_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for seg in pattern.split("."):
        parts.append({"*": r"\.[^.]+", "#": r"(?:\.[^.]+)*"}.get(seg, re.escape("." + seg)))
    return re.compile("".join(parts))


def oracle_matches(pattern: str, topic: str) -> bool:
    """Brute force: AMQP pattern -> regex over ``.seg.seg`` (independent of both twins)."""
    return _oracle_regex(pattern).fullmatch("." + topic) is not None


def csr(offsets: Any, dests: Any) -> list[list[int]]:
    return [dests[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


# -- agents and direct delivery -----------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_slots_are_dense_idempotent_and_reused(impl: R) -> None:
    r = impl()
    a, b, c = AgentId("echo", "a"), AgentId("echo", "b"), AgentId("calc", "c")
    assert [r.add_agent(a), r.add_agent(b), r.add_agent(c)] == [0, 1, 2]
    assert r.add_agent(a) == 0 and len(r) == 3
    assert r.slot(b) == 1 and r.agent(1) == b
    r.remove_agent(b)
    assert len(r) == 2
    with pytest.raises(RoutingError, match="unknown agent"):
        r.slot(b)
    with pytest.raises(RoutingError, match="unknown slot 1"):
        r.agent(1)
    d = AgentId("echo", "d")
    assert r.add_agent(d) == 1  # the freed slot is reused
    assert r.agent(1) == d and r.instances("echo") == [0, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_direct_handle_goes_stale_when_the_agent_is_removed(impl: R) -> None:
    r = impl()
    a = AgentId("echo", "a")
    r.add_agent(a)
    h = r.handle(a)
    assert csr(*r.route_many([KIND_DIRECT], [h])) == [[0]]
    r.remove_agent(a)
    r.add_agent(AgentId("other", "x"))  # takes slot 0 again
    assert csr(*r.route_many([KIND_DIRECT], [h])) == [[]]  # never the new occupant
    r.add_agent(a)
    assert r.slot(a) == 1 and csr(*r.route_many([KIND_DIRECT], [r.handle(a)])) == [[1]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda r: r.add_agent("echo/a"), "agent must be an AgentId, got str"),
        (lambda r: r.remove_agent(AgentId("ghost")), "unknown agent"),
        (lambda r: r.slot(AgentId("ghost")), "unknown agent"),
        (lambda r: r.slot(["not", "hashable"]), "unknown agent"),
        (lambda r: r.handle(AgentId("ghost")), "unknown agent"),
        (lambda r: r.agent(5), "unknown slot 5"),
        (lambda r: r.agent(-1), "unknown slot -1"),
        (lambda r: r.agent("0"), "unknown slot '0'"),
        (lambda r: r.outstanding(7), "unknown slot 7"),
        (lambda r: r.ack(7), "unknown slot 7"),
        (lambda r: r.ack(0, -1), "ack count must be an int >= 0"),
        (lambda r: r.ack(0, 1.5), "ack count must be an int >= 0"),
        (lambda r: r.ack(0, True), "ack count must be an int >= 0"),
        (lambda r: r.agent(True), "unknown slot True"),
        (lambda r: r.pick("ghost"), "unknown agent type 'ghost'"),
        (lambda r: r.pick(""), "agent type must be a non-empty str"),
        (lambda r: r.pick(3), "agent type must be a non-empty str"),
        (lambda r: r.type_handle("ghost"), "unknown agent type"),
        (lambda r: r.instances("ghost"), "unknown agent type"),
        (lambda r: r.policy("ghost"), "unknown agent type"),
        (lambda r: r.set_policy("echo", "random"), "unknown policy 'random'"),
        (lambda r: r.set_policy("", "round_robin"), "agent type must be a non-empty str"),
    ],
)
def test_bad_agent_requests_raise_routing_error(impl: R, call: R, reason: str) -> None:
    r = impl()
    r.add_agent(AgentId("echo", "a"))
    with pytest.raises(RoutingError, match=re.escape(reason)):
        call(r)


@pytest.mark.parametrize("impl", IMPLS)
def test_pick_without_instances_raises(impl: R) -> None:
    r = impl()
    r.add_agent(AgentId("echo", "a"))
    r.remove_agent(AgentId("echo", "a"))
    with pytest.raises(RoutingError, match="no instances of agent type 'echo'"):
        r.pick("echo")
    assert csr(*r.route_many([KIND_TYPE], [r.type_handle("echo")])) == [[]]


@pytest.mark.parametrize("impl", [RouterPy, None])
def test_max_topics_must_be_positive(impl: R | None) -> None:
    cls = impl or RouterC
    if cls is None:
        pytest.skip("native extension not built")
    for bad in (0, -3, "10", 1.5, True, 2**31):
        with pytest.raises(RoutingError, match="max_topics must be an int >= 1"):
            cls(max_topics=bad)


# -- by type: load balancing --------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_round_robin_rotates_and_survives_removal(impl: R) -> None:
    r = impl()
    agents = [AgentId("echo", k) for k in "abcd"]
    for a in agents:
        r.add_agent(a)
    assert r.policy("echo") == "round_robin"
    assert [r.pick("echo") for _ in range(6)] == [0, 1, 2, 3, 0, 1]
    r.remove_agent(agents[0])  # before the cursor: rotation continues with slot 2
    assert [r.pick("echo") for _ in range(4)] == [2, 3, 1, 2]
    assert r.outstanding(1) == 3 and r.outstanding(2) == 3 and r.outstanding(3) == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_least_outstanding_prefers_idle_instances_and_acks_count(impl: R) -> None:
    r = impl()
    r.set_policy("llm", "least_outstanding")  # policy may be set before any instance exists
    slots = [r.add_agent(AgentId("llm", k)) for k in "abc"]
    assert [r.pick("llm") for _ in range(3)] == slots  # ties rotate
    r.ack(slots[1])
    assert r.pick("llm") == slots[1]  # the only one with nothing in flight
    r.ack(slots[2], 5)  # more than outstanding: clamps at zero
    assert r.outstanding(slots[2]) == 0
    assert r.pick("llm") == slots[2]
    r.ack(slots[0], 0)
    assert [r.outstanding(s) for s in slots] == [1, 1, 1]
    r.set_policy("llm", "round_robin")
    assert r.policy("llm") == "round_robin"


@pytest.mark.parametrize("impl", IMPLS)
def test_least_outstanding_spreads_load_under_unequal_service(impl: R) -> None:
    r = impl()
    r.set_policy("w", "least_outstanding")
    fast, slow = r.add_agent(AgentId("w", "fast")), r.add_agent(AgentId("w", "slow"))
    counts = {fast: 0, slow: 0}
    for _ in range(100):
        s = r.pick("w")
        counts[s] += 1
        if s == fast:
            r.ack(fast)  # the fast one finishes at once; the slow one never does
    assert counts[slow] == 1 and counts[fast] == 99


# -- topics -------------------------------------------------------------------------------

MATCH_CASES = [
    ("pings.eu", "pings.eu", True),
    ("pings.eu", "pings.us", False),
    ("pings.*", "pings.eu", True),
    ("pings.*", "pings", False),
    ("pings.*", "pings.eu.west", False),
    ("*.eu", "pings.eu", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("pings.#", "pings", True),
    ("pings.#", "pings.eu.west", True),
    ("#.west", "west", True),
    ("#.west", "pings.eu.west", True),
    ("#.west", "pings.eu", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("#.*", "a", True),
    ("#.*.*", "a", False),
    ("#.#", "a.b", True),
    ("*.#.*", "a.b", True),
    ("*.#.*", "a", False),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("pattern", "topic", "hit"), MATCH_CASES)
def test_pattern_matching(impl: R, pattern: str, topic: str, hit: bool) -> None:
    r = impl()
    r.subscribe(pattern, 1)
    assert r.match(topic) == ([1] if hit else [])
    assert oracle_matches(pattern, topic) is hit  # the test oracle agrees with the table


@pytest.mark.parametrize("impl", IMPLS)
def test_match_is_ascending_unique_and_unsubscribe_is_exact(impl: R) -> None:
    r = impl()
    s1 = r.subscribe("pings.eu", 9)
    s2 = r.subscribe("pings.*", 9)  # the same subscriber twice
    r.subscribe("#", 3)
    s4 = r.subscribe("pings.*", 5)
    assert r.match("pings.eu") == [3, 5, 9]
    assert r.subscription_count() == 4
    r.unsubscribe(s2)
    assert r.match("pings.eu") == [3, 5, 9]  # still subscribed via s1
    r.unsubscribe(s1)
    r.unsubscribe(s4)
    assert r.match("pings.eu") == [3]
    with pytest.raises(RoutingError, match=f"unknown subscription {s1}"):
        r.unsubscribe(s1)
    with pytest.raises(RoutingError, match="unknown subscription 'x'"):
        r.unsubscribe("x")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty pattern"),
        ("a..b", "empty segment at position 1"),
        (".a", "empty segment at position 0"),
        ("a.", "empty segment at position 1"),
        ("a.#x", "wildcard inside segment '#x'"),
        ("a*.b", "wildcard inside segment 'a*'"),
        (5, "pattern must be a str, got int"),
        (None, "pattern must be a str, got NoneType"),
        (b"a.b", "pattern must be a str, got bytes"),
        ("a." * MAX_TOPIC_LENGTH + "a", "longer than"),
    ],
)
def test_bad_patterns_raise_routing_error(impl: R, pattern: object, reason: str) -> None:
    r = impl()
    with pytest.raises(RoutingError, match=re.escape(reason)):
        r.subscribe(pattern, 1)
    assert r.subscription_count() == 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "empty topic"),
        ("a..b", "empty segment"),
        ("a.*", "wildcard '*'"),
        ("#", "wildcard '#'"),
        ("a.b#", "wildcard 'b#'"),
        (7, "topic must be a str, got int"),
    ],
)
def test_bad_topics_raise_routing_error(impl: R, topic: object, reason: str) -> None:
    r = impl()
    with pytest.raises(RoutingError, match=re.escape(reason)):
        r.match(topic)
    with pytest.raises(RoutingError, match=re.escape(reason)):
        r.topic_handles(["ok", topic])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("subscriber", "reason"),
    [("7", "got str"), (1.0, "got float"), (True, "got bool"), (2**63, "does not fit in int64")],
)
def test_bad_subscribers_raise_routing_error(impl: R, subscriber: object, reason: str) -> None:
    r = impl()
    with pytest.raises(RoutingError, match=re.escape(reason)):
        r.subscribe("a.b", subscriber)


@pytest.mark.parametrize("impl", IMPLS)
def test_match_sees_changes_after_a_topic_was_matched(impl: R) -> None:
    r = impl()
    r.subscribe("a.*", 1)
    assert r.match("a.b") == [1]
    s2 = r.subscribe("a.b", 2)  # exact subscription on a topic matched before
    assert r.match("a.b") == [1, 2]
    s3 = r.subscribe("#.b", 0)
    assert r.match("a.b") == [0, 1, 2]
    r.unsubscribe(s2)
    assert r.match("a.b") == [0, 1]
    r.unsubscribe(s3)
    assert r.match("a.b") == [1]


@pytest.mark.parametrize("impl", IMPLS)
def test_numpy_integers_from_batches_are_accepted(impl: R) -> None:
    r = impl()
    r.add_agent(AgentId("echo", "a"))
    _, dests = r.route_many([KIND_TYPE], [r.type_handle("echo")])
    slot = dests[0]
    assert isinstance(slot, np.integer)
    assert r.agent(slot) == AgentId("echo", "a") and r.outstanding(slot) == 1
    r.ack(slot, np.int32(1))
    assert r.outstanding(slot) == 0
    r.subscribe("t", np.int64(5))
    assert r.match("t") == [5] and type(r.match("t")[0]) is int


@pytest.mark.parametrize("impl", IMPLS)
def test_subscribers_span_int64(impl: R) -> None:
    r = impl()
    r.subscribe("a", 2**63 - 1)
    r.subscribe("*", -(2**63))
    assert r.match("a") == [-(2**63), 2**63 - 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_unpinned_topics_are_an_lru_and_evicted_handles_are_refused(impl: R) -> None:
    r = impl(max_topics=2)
    r.subscribe("pinned", 1)  # exact subscriptions pin their topic
    h_a = r.topic_handle("a")
    h_b = r.topic_handle("b")
    assert r.topic_handle("a") == h_a  # a is now the most recently used
    h_c = r.topic_handle("c")  # evicts b, not a
    assert r.topic_handle("a") == h_a
    with pytest.raises(RoutingError, match=r"handles\[1\]: stale or invalid topic handle"):
        r.match_many([h_a, h_b])
    with pytest.raises(RoutingError, match=r"targets\[0\]: stale or invalid topic handle"):
        r.route_many([KIND_TOPIC], [h_b])
    for _ in range(3):
        r.topic_handle("x")
        r.topic_handle("y")
    assert csr(*r.match_many([r.topic_handle("pinned")])) == [[1]]  # never evicted
    assert r.topic_handle("b") != h_b  # re-interned: same index maybe, new generation
    del h_c


@pytest.mark.parametrize("impl", IMPLS)
def test_unsubscribed_topic_becomes_evictable(impl: R) -> None:
    r = impl(max_topics=1)
    sid = r.subscribe("t", 4)
    h = r.topic_handle("t")
    r.topic_handle("u")
    assert csr(*r.match_many([h])) == [[4]]
    r.unsubscribe(sid)  # t joins the LRU, which now holds two: u (older) is evicted
    assert csr(*r.match_many([h])) == [[]]
    r.topic_handle("v")  # evicts t
    with pytest.raises(RoutingError, match="stale"):
        r.match_many([h])


# -- batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_route_many_mixes_kinds_in_csr(impl: R) -> None:
    r = impl()
    a = AgentId("echo", "a")
    r.add_agent(a)
    r.add_agent(AgentId("echo", "b"))
    r.subscribe("pings.*", 7)
    r.subscribe("pings.eu", 2)
    th = r.topic_handles(["pings.eu", "other", "pings.us"])
    assert th.dtype == np.int64 and th.shape == (3,)
    kinds = np.array([KIND_DIRECT, KIND_TYPE, KIND_TOPIC, KIND_TYPE, KIND_TOPIC, KIND_TOPIC])
    targets = [r.handle(a), r.type_handle("echo"), th[0], r.type_handle("echo"), th[1], th[2]]
    offsets, dests = r.route_many(kinds, targets)
    assert offsets.dtype == np.int64 and dests.dtype == np.int64
    assert offsets.tolist() == [0, 1, 2, 4, 5, 5, 6]
    assert csr(offsets, dests) == [[0], [0], [2, 7], [1], [], [7]]
    assert r.outstanding(0) == 1 and r.outstanding(1) == 1  # by-type picks count


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batches(impl: R) -> None:
    r = impl()
    for offsets, dests in (r.route_many([], []), r.match_many(np.array([], dtype=np.int64))):
        assert offsets.tolist() == [0] and dests.tolist() == []
    assert r.topic_handles([]).tolist() == []


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("kinds", "targets", "reason"),
    [
        ([0, 1], [0], "kinds has 2 entries but targets has 1"),
        ([3], [0], "kinds[0]: unknown route kind 3"),
        ([0, KIND_TYPE], [0, 9], "targets[1]: unknown type handle 9"),
        ([KIND_TYPE], [-1], "targets[0]: unknown type handle -1"),
        ([KIND_TOPIC], [-5], "targets[0]: stale or invalid topic handle -5"),
        ([KIND_TOPIC], [1 << 40], "stale or invalid topic handle"),
        ([256], [0], "kinds has values outside uint8"),
        ([0], [0.5], "targets must hold integers, got dtype float64"),
        ([0], ["x"], "targets must hold integers"),
        ([[0]], [[0]], "kinds must be one-dimensional"),
        ([0], [2**64], "targets"),
    ],
)
def test_bad_batches_raise_before_any_decision(
    impl: R, kinds: Any, targets: Any, reason: str
) -> None:
    r = impl()
    r.add_agent(AgentId("echo", "a"))
    r.topic_handle("t")
    with pytest.raises(RoutingError, match=re.escape(reason)):
        r.route_many(kinds, targets)
    assert r.outstanding(0) == 0  # validation precedes every pick


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_batch_has_no_side_effects(impl: R) -> None:
    r = impl()
    r.add_agent(AgentId("echo", "a"))
    with pytest.raises(RoutingError, match=r"kinds\[2\]"):
        r.route_many([KIND_TYPE, KIND_TYPE, 9], [0, 0, 0])
    assert r.outstanding(0) == 0
    with pytest.raises(RoutingError, match="topics must be an iterable of str, not a str"):
        r.topic_handles("abc")


@pytest.mark.parametrize("impl", IMPLS)
def test_many_exact_subscriptions_with_wildcards_agree_with_the_oracle(impl: R) -> None:
    r = impl()
    subs: dict[str, int] = {}
    for i in range(2000):
        topic = f"t{i % 500}.s{i % 7}"
        r.subscribe(topic, i)
        subs.setdefault(topic, i)
    patterns = {"t1.*": 10_001, "#.s3": 10_002, "t2.#": 10_003, "*.s0.#": 10_004}
    for p, s in patterns.items():
        r.subscribe(p, s)
    topics = [f"t{j}.s{j % 7}" for j in range(0, 520, 3)]
    offsets, dests = r.match_many(r.topic_handles(topics))
    got = csr(offsets, dests)
    for topic, result in zip(topics, got, strict=True):
        want = {i for i in range(2000) if f"t{i % 500}.s{i % 7}" == topic}
        want |= {s for p, s in patterns.items() if oracle_matches(p, topic)}
        assert result == sorted(want), topic


# -- the face and the native loader -------------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=60
    )


_BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'engine._native._router':\n"
    "            raise ModuleNotFoundError('blocked for the test', name=name)\n"  # not built
    "sys.meta_path.insert(0, Block())\n"
)


def test_missing_native_router_is_an_error_when_required() -> None:
    res = _python(_BLOCK + "import engine.routing", ENGINE_REQUIRE_NATIVE="1")
    assert res.returncode != 0
    assert "NativeUnavailable" in res.stderr and "engine._native._router is not built" in res.stderr


def test_missing_native_router_falls_back_to_the_reference() -> None:
    res = _python(_BLOCK + "import engine.routing as r\nprint(r.Router.__name__, r.RouterC)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["RouterPy", "None"]


def test_router_is_the_compiled_twin_when_built() -> None:
    assert Router is (RouterC if RouterC is not None else RouterPy)
    if os.environ.get("ENGINE_REQUIRE_NATIVE") == "1":
        assert RouterC is not None and RouterC.__module__ == "engine._native._router"


# -- differential: random operation sequences on both twins -------------------------------

TYPES = st.sampled_from(["echo", "calc", "llm"])
KEYS = st.sampled_from(["a", "b", "c", "d"])
# Small alphabets so topics collide with exact subscriptions and patterns often.
TOPICS = st.lists(st.sampled_from(["a", "bb"]), min_size=1, max_size=3).map(".".join)
PATTERNS = st.one_of(
    TOPICS,
    st.lists(st.sampled_from(["a", "bb", "*", "#"]), min_size=1, max_size=3).map(".".join),
)


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        out = fn()
    except RoutingError as exc:
        return ("RoutingError", str(exc))
    if isinstance(out, tuple):
        return tuple(np.asarray(x).tolist() for x in out)
    if isinstance(out, np.ndarray):
        return out.tolist()
    return out


class _Twins(RuleBasedStateMachine):
    """Drives RouterPy and RouterC with the same calls; every answer must be identical."""

    def __init__(self) -> None:
        super().__init__()
        assert RouterC is not None
        self.py: Any = RouterPy()
        self.c: Any = RouterC()

    def both(self, call: Callable[[Any], Any]) -> Any:
        a, b = _outcome(lambda: call(self.py)), _outcome(lambda: call(self.c))
        assert a == b
        return a


class TwinAgents(_Twins):
    """Agents, policies, picks and acks, and direct/by-type batches."""

    @rule(t=TYPES, k=KEYS)
    def add_agent(self, t: str, k: str) -> None:
        self.both(lambda r: r.add_agent(AgentId(t, k)))

    @rule(t=TYPES, k=KEYS)
    def remove_agent(self, t: str, k: str) -> None:
        self.both(lambda r: r.remove_agent(AgentId(t, k)))

    @rule(t=TYPES, policy=st.sampled_from(["round_robin", "least_outstanding"]))
    def set_policy(self, t: str, policy: str) -> None:
        self.both(lambda r: r.set_policy(t, policy))

    @rule(t=TYPES)
    def pick(self, t: str) -> None:
        self.both(lambda r: r.pick(t))

    @rule(slot=st.integers(-1, 12), n=st.integers(0, 3))
    def ack(self, slot: int, n: int) -> None:
        self.both(lambda r: r.ack(slot, n))

    @rule(t=TYPES, k=KEYS)
    def handle(self, t: str, k: str) -> None:
        self.both(lambda r: r.handle(AgentId(t, k)))

    @rule(
        reqs=st.lists(
            st.one_of(
                st.tuples(st.just(KIND_TYPE), st.integers(-1, 3)),
                st.tuples(st.just(KIND_DIRECT), st.integers(0, 12)),
                st.tuples(st.just(KIND_DIRECT), st.integers(0, 12).map(lambda s: (1 << 32) | s)),
            ),
            max_size=8,
        )
    )
    def route_many(self, reqs: list[tuple[int, int]]) -> None:
        kinds = np.array([k for k, _ in reqs], dtype=np.uint8)
        targets = np.array([t for _, t in reqs], dtype=np.int64)
        self.both(lambda r: r.route_many(kinds, targets))

    @invariant()
    def same_tables(self) -> None:
        for t in ("echo", "calc", "llm"):
            insts = self.both(lambda r, t=t: r.instances(t))
            if isinstance(insts, list):
                for s in insts:
                    self.both(lambda r, s=s, t=t: (r.agent(s), r.outstanding(s), r.policy(t)))
        assert len(self.py) == len(self.c)


class TwinTopics(_Twins):
    """Subscriptions, matching (also against the regex oracle), topic LRU and batches."""

    subs = Bundle("subs")
    handles = Bundle("handles")

    @initialize(max_topics=st.integers(1, 12))
    def start(self, max_topics: int) -> None:
        assert RouterC is not None
        self.py = RouterPy(max_topics=max_topics)
        self.c = RouterC(max_topics=max_topics)
        self.live: dict[int, tuple[str, int]] = {}

    @rule(target=subs, pattern=PATTERNS, subscriber=st.integers(0, 5))
    def subscribe(self, pattern: str, subscriber: int) -> Any:
        sid = self.both(lambda r: r.subscribe(pattern, subscriber))
        self.live[sid] = (pattern, subscriber)
        return sid

    @rule(sid=consumes(subs))
    def unsubscribe(self, sid: int) -> None:
        self.both(lambda r: r.unsubscribe(sid))
        del self.live[sid]

    @rule(sid=st.integers(-2, 3))
    def unsubscribe_unknown(self, sid: int) -> None:
        if sid not in self.live:
            self.both(lambda r: r.unsubscribe(sid))

    @rule(topic=TOPICS)
    def match(self, topic: str) -> None:
        got = self.both(lambda r: r.match(topic))
        assert got == sorted({s for p, s in self.live.values() if oracle_matches(p, topic)})

    @invariant()
    def watched_topics_match_the_oracle(self) -> None:
        # After every step, so a stale cached match cannot hide between two rules.
        if hasattr(self, "live"):
            for topic in ("a", "a.bb", "bb.a.a"):
                self.match(topic)

    @rule(target=handles, topics=st.lists(TOPICS, min_size=1, max_size=4))
    def topic_handles(self, topics: list[str]) -> Any:
        return multiple(*self.both(lambda r: r.topic_handles(topics)))

    @rule(hs=st.lists(handles, max_size=6))
    def match_many(self, hs: list[int]) -> None:
        self.both(lambda r: r.match_many(np.array(hs, dtype=np.int64)))

    @rule(hs=st.lists(handles, max_size=6), agents=st.integers(0, 2))
    def route_many(self, hs: list[int], agents: int) -> None:
        kinds = np.array([KIND_TOPIC] * len(hs) + [KIND_DIRECT] * agents, dtype=np.uint8)
        self.both(lambda r: r.route_many(kinds, np.array(hs + [0] * agents, dtype=np.int64)))


@pytest.mark.skipif(RouterC is None, reason="native extension not built")
@pytest.mark.parametrize("machine", [TwinAgents, TwinTopics], ids=["agents", "topics"])
def test_twins_agree_on_random_operation_sequences(machine: type[_Twins]) -> None:
    check_twins_agree(machine)


def check_twins_agree(machine: type[_Twins]) -> None:
    """Run the state machine: every step asserts both twins gave the same answer."""
    case = machine.TestCase
    case.settings = settings(max_examples=100, stateful_step_count=35, deadline=None)
    case().runTest()


@given(pattern=PATTERNS, topic=TOPICS)
@settings(max_examples=300, deadline=None)
def test_reference_matcher_agrees_with_the_regex_oracle(pattern: str, topic: str) -> None:
    r = RouterPy()
    r.subscribe(pattern, 0)
    assert (r.match(topic) == [0]) is oracle_matches(pattern, topic)


@pytest.mark.parametrize("impl", IMPLS)
def test_thousands_of_wildcard_patterns_subscribe_and_unsubscribe(impl: R) -> None:
    """Grows and shrinks the trie (edge-table rehash, deletion, node reuse) against the oracle."""
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(40)] + ["*", "#"]
    r = impl()
    live: dict[int, tuple[str, int]] = {}
    for round_ in range(3):
        for i in range(1000):
            pattern = ".".join(rng.choice(words, size=int(rng.integers(1, 5))))
            live[r.subscribe(pattern, i % 97)] = (pattern, i % 97)
        for sid in list(live)[round_ % 2 :: 2]:
            r.unsubscribe(sid)
            del live[sid]
        topics = [".".join(rng.choice(words[:40], size=int(rng.integers(1, 6)))) for _ in range(60)]
        got = csr(*r.match_many(r.topic_handles(topics)))
        for topic, result in zip(topics, got, strict=True):
            want = sorted({s for p, s in live.values() if oracle_matches(p, topic)})
            assert result == want, topic
    for sid in list(live):
        r.unsubscribe(sid)
    assert r.subscription_count() == 0 and r.match("w1.w2") == []
