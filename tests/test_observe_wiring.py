"""The observability endpoint wired into Runtime, broker and node (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Agent, AgentId, Message, Runtime, handler
from engine.observe import Metrics


class WirePing(Message):
    n: int


class WireEcho(Agent):
    @handler
    async def on_ping(self, msg: WirePing, ctx: object) -> WirePing:
        return WirePing(msg.n + 1)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body


def messages(text: str) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "engine_messages_total"
    }


# -- Runtime(metrics=..., metrics_port=...) -----------------------------------------------


def test_runtime_metrics_port_serves_live_counts_and_profile() -> None:
    async def main() -> None:
        async with Runtime(metrics_port=0) as rt:
            rt.register("echo", WireEcho)
            url = rt.metrics_url
            assert url is not None and url.startswith("http://127.0.0.1:")
            assert isinstance(rt.metrics, Metrics)
            before = messages((await asyncio.to_thread(get, url + "/metrics")).decode())
            for i in range(5):
                assert await rt.send(WirePing(i), to=AgentId("echo", "a")) == WirePing(i + 1)
            after = messages((await asyncio.to_thread(get, url + "/metrics")).decode())
            assert before.get("send", 0) == 0
            assert after["send"] == 5 and after["reply"] == 5
            prof = await asyncio.to_thread(get, url + "/debug/profile?seconds=0.2&hz=50")
            assert orjson.loads(prof)["$schema"].startswith("https://www.speedscope.app")
        assert rt.metrics_url is None
        with pytest.raises(urllib.error.URLError):  # closed by stop()
            await asyncio.to_thread(get, url + "/healthz")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_runtime_with_given_metrics_and_no_port() -> None:
    async def main() -> dict[str, int]:
        m = Metrics()
        async with Runtime(metrics=m) as rt:
            assert rt.metrics is m and rt.metrics_url is None
            rt.register("echo", WireEcho)
            await rt.send(WirePing(1), to=AgentId("echo", "a"))
            m.exposition()
            return m.messages_total()

    assert asyncio.run(main())["send"] == 1


def test_runtime_without_metrics_has_none() -> None:
    rt = Runtime()
    assert rt.metrics is None and rt.metrics_url is None


def test_runtime_metrics_bad_arguments() -> None:
    with pytest.raises(ValueError, match="port must be in"):
        Runtime(metrics_port=70000)
    with pytest.raises(TypeError, match="metrics_port must be an int"):
        Runtime(metrics_port="9100")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"metrics must be an engine\.observe\.Metrics"):
        Runtime(metrics=object())  # type: ignore[arg-type]
