"""The hot-path probes of ``benches/hotpath.py`` timed: one native batch per call.

The instruction-count gate (``engine bench --compare REF --instructions``) counts these
probes under callgrind; here pytest-benchmark times them, so the default timing gate
(``engine bench --compare REF``) covers the same hot path in a second or two per round.
"""

from __future__ import annotations

from typing import Any

import pytest

from benches.hotpath import PROBES, close_runtimes

pytestmark = pytest.mark.quick


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe(benchmark: Any, name: str) -> None:
    run = PROBES[name]()
    benchmark.group = "hotpath"
    try:
        benchmark(run, 1)
    finally:
        close_runtimes()
