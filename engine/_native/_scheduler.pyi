"""Stub of the compiled scheduler (ext/_scheduler.pyx); API documented in engine.scheduling."""

from collections.abc import Callable, Iterable
from typing import Never, final

import numpy as np
import numpy.typing as npt

@final
class SchedulerC:
    # Positional arguments are refused (the compiled __init__ slot shows as *args).
    def __init__(
        self, *args: Never, on_dep_failure: str = "cancel", clock: Callable[[], float] = ...
    ) -> None: ...
    @property
    def on_dep_failure(self) -> str: ...
    def set_weight(self, tenant: int, weight: int) -> None: ...
    def weight(self, tenant: int) -> int: ...
    def set_pool(
        self,
        pool: int,
        *,
        slots: int | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> None: ...
    def in_use(self, pool: int) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, task: object, /) -> bool: ...
    def state(self, task: int) -> str: ...
    def stats(self) -> dict[str, int]: ...
    def expired(self) -> npt.NDArray[np.int64]: ...  # int64_t[::1]
    def push(
        self,
        task: int,
        priority: int = 0,
        deadline: float = ...,
        *,
        tenant: int = 0,
        pool: int = 0,
        deps: Iterable[int] = (),
    ) -> None: ...
    def push_many(
        self,
        tasks: object,  # const int64_t[::1] after conversion
        priorities: object = None,  # int32 range
        deadlines: object = None,  # const double[::1]
        *,
        tenants: object = None,
        pools: object = None,
        dep_counts: object = None,
        deps: object = None,
    ) -> None: ...
    def add_dependency(self, task: int, dep: int) -> None: ...
    def pop(self) -> int | None: ...
    def pop_ready(self, n: int) -> npt.NDArray[np.int64]: ...  # int64_t[::1]
    def complete(self, task: int) -> None: ...
    def complete_many(self, tasks: object) -> None: ...  # const int64_t[::1]
    def fail(self, task: int) -> npt.NDArray[np.int64]: ...
    def cancel(self, task: int) -> npt.NDArray[np.int64]: ...
