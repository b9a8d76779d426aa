"""Stub of engine._native._hnsw (ext/_hnsw.pyx; twin engine/memory/_hnsw_py.py)."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

@final
class HnswSQ8:
    owner: Any
    l2: bool
    ndis: int
    def __new__(
        cls,
        neighbors: npt.NDArray[np.int32],  # const int32_t[::1]
        offsets: npt.NDArray[np.uint64],  # const uint64_t[::1]
        levels: npt.NDArray[np.int32],  # const int32_t[::1]
        cum: npt.NDArray[np.int32],  # const int32_t[::1]
        codes: npt.NDArray[np.uint8],  # const uint8_t[:, ::1]
        vmin: npt.NDArray[np.float32],  # const float[::1]
        vdiff: npt.NDArray[np.float32],  # const float[::1]
        entry: int,
        max_level: int,
        l2: bool,
        owner: Any = None,
    ) -> HnswSQ8: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def d(self) -> int: ...
    @staticmethod
    def simd() -> str: ...
    def search(
        self,
        q: npt.NDArray[np.float32],  # const float[:, ::1]
        k: int,
        ef: int,
        out_d: npt.NDArray[np.float32],  # float[:, ::1]
        out_i: npt.NDArray[np.int64],  # int64_t[:, ::1]
        bitmap: npt.NDArray[np.uint8] | None = None,  # const uint8_t[::1]
        ext: npt.NDArray[np.int64] | None = None,  # const int64_t[::1]
        normalize: bool = False,
    ) -> int: ...
