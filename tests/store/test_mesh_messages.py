"""The mesh broker's durable messages: pending (insert/replace/remove) and dead letters."""

from __future__ import annotations

from engine.store import DeadLetter, MeshWrites, PendingMessage
from tests.agents_for_tests import uv
from tests.store.conftest import Backend


@uv
async def test_pending_batches_restore_in_order(backend: Backend) -> None:
    async with backend.open() as s:
        assert not MeshWrites()
        await s.mesh_apply(
            MeshWrites(put=[PendingMessage(f"m{i}", b"env%d" % i) for i in range(5)])
        )
        await s.mesh_apply(MeshWrites(remove=["m1", "m3", "unknown"]))
        await s.mesh_apply(MeshWrites(put=[PendingMessage("m5", b"env5")], remove=["m0"]))
        await s.mesh_apply(MeshWrites(put=[PendingMessage("x", b"other broker")]), broker="b2")
        got = await s.mesh_pending()
        assert got == [
            PendingMessage("m2", b"env2"),
            PendingMessage("m4", b"env4"),
            PendingMessage("m5", b"env5"),
        ]
        assert await s.mesh_pending(broker="b2") == [PendingMessage("x", b"other broker")]
        # put then remove of the same key in one batch leaves nothing (put applies first)
        await s.mesh_apply(MeshWrites(put=[PendingMessage("t", b"")], remove=["t"]))
        assert "t" not in {p.key for p in await s.mesh_pending()}
        await s.mesh_apply(MeshWrites(put=[PendingMessage("m2", b"replaced")]))
        got = {p.key: p.envelope for p in await s.mesh_pending()}
        assert got["m2"] == b"replaced" and len(got) == 3


@uv
async def test_dead_letters_list_remove_and_bound(backend: Backend) -> None:
    async with backend.open(max_dead_letters=5) as s:
        await s.mesh_apply(
            MeshWrites(
                put=[PendingMessage("k0", b"e")],
                remove=["k0"],
                dead=[DeadLetter(key="k0", envelope=b"e", reason="no route", attempts=3)],
            )
        )
        (d,) = await s.dead_letters()
        assert (d.key, d.envelope, d.reason, d.attempts, d.at) == (
            "k0",
            b"e",
            "no route",
            3,
            backend.clock.t,
        )
        assert await s.mesh_pending() == []
        for i in range(1, 8):
            await s.mesh_apply(
                MeshWrites(dead=[DeadLetter(key=f"k{i}", envelope=b"e", reason="r", attempts=i)])
            )
        kept = await s.dead_letters()
        assert [x.key for x in kept] == ["k3", "k4", "k5", "k6", "k7"]  # oldest dropped
        page = await s.dead_letters(after=kept[1].id, limit=2)
        assert [x.key for x in page] == ["k5", "k6"]
        assert await s.remove_dead_letters([kept[0].id, kept[2].id, 10**9]) == 2
        assert [x.key for x in await s.dead_letters()] == ["k4", "k6", "k7"]
        assert await s.dead_letters(broker="elsewhere") == []
        assert await s.remove_dead_letters([kept[1].id], broker="elsewhere") == 0
