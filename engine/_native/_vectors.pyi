"""Stub of engine._native._vectors (ext/_vectors.pyx; twin engine/memory/_vectors_py.py)."""

from typing import final

import numpy as np
import numpy.typing as npt

@final
class SlotMap:
    def __new__(cls, capacity: int = 0) -> SlotMap: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def clear(self, capacity: int = 0) -> None: ...
    def put_many(
        self,
        ext: npt.NDArray[np.int64],  # const int64_t[::1]
        slots: npt.NDArray[np.int64],  # const int64_t[::1]
    ) -> None: ...
    def get_many(
        self,
        ext: npt.NDArray[np.int64],  # const int64_t[::1]
        keys: npt.NDArray[np.int64],  # const int64_t[::1]
        out: npt.NDArray[np.int64],  # int64_t[::1]
    ) -> int: ...
    def remove_many(
        self,
        ext: npt.NDArray[np.int64],  # const int64_t[::1]
        keys: npt.NDArray[np.int64],  # const int64_t[::1]
    ) -> int: ...

def check_finite(x: npt.NDArray[np.float32]) -> int: ...  # const float[:, ::1]
def normalize(x: npt.NDArray[np.float32]) -> int: ...  # float[:, ::1]
def filter_bitmap(
    ns: npt.NDArray[np.int8] | npt.NDArray[np.int16] | npt.NDArray[np.int32],  # const ns_t[::1]
    code: int,
    alive: npt.NDArray[np.uint8],  # const uint8_t[::1]
    out: npt.NDArray[np.uint8],  # uint8_t[::1]
) -> int: ...
def filter_alive(
    slots: npt.NDArray[np.int64],  # const int64_t[::1]
    alive: npt.NDArray[np.uint8],  # const uint8_t[::1]
    out: npt.NDArray[np.int64],  # int64_t[::1]
) -> int: ...
def bitmap_and(
    a: npt.NDArray[np.uint8],  # const uint8_t[::1]
    b: npt.NDArray[np.uint8],  # const uint8_t[::1]
    out: npt.NDArray[np.uint8],  # uint8_t[::1]
) -> int: ...
def bitmap_count(bitmap: npt.NDArray[np.uint8]) -> int: ...  # const uint8_t[::1]
def bitmap_set(
    slots: npt.NDArray[np.int64],  # const int64_t[::1]
    out: npt.NDArray[np.uint8],  # uint8_t[::1]
) -> None: ...
def bitmap_to_slots(
    bitmap: npt.NDArray[np.uint8],  # const uint8_t[::1]
    n: int,
    out: npt.NDArray[np.int64],  # int64_t[::1]
) -> int: ...
def ttl_sweep(
    expire: npt.NDArray[np.float64],  # const double[::1]
    now: float,
    alive: npt.NDArray[np.uint8],  # uint8_t[::1]
    out: npt.NDArray[np.int64],  # int64_t[::1]
) -> tuple[int, float]: ...
def map_ids(
    slots: npt.NDArray[np.int64],  # const int64_t[:, ::1]
    table: npt.NDArray[np.int64],  # const int64_t[::1]
    out: npt.NDArray[np.int64],  # int64_t[:, ::1]
) -> None: ...
def merge_topk(
    d: npt.NDArray[np.float32],  # const float[:, ::1]
    i: npt.NDArray[np.int64],  # const int64_t[:, ::1]
    k: int,
    largest: bool,
    out_d: npt.NDArray[np.float32],  # float[:, ::1]
    out_i: npt.NDArray[np.int64],  # int64_t[:, ::1]
) -> None: ...
def score_sq8(
    codes: npt.NDArray[np.uint8],  # const uint8_t[:, ::1]
    slots: npt.NDArray[np.int64],  # const int64_t[::1]
    q: npt.NDArray[np.float32],  # const float[::1]
    vmin: npt.NDArray[np.float32],  # const float[::1]
    vdiff: npt.NDArray[np.float32],  # const float[::1]
    l2: bool,
    out: npt.NDArray[np.float32],  # float[::1]
) -> None: ...
def score_f32(
    x: npt.NDArray[np.float32],  # const float[:, ::1]
    slots: npt.NDArray[np.int64],  # const int64_t[::1]
    q: npt.NDArray[np.float32],  # const float[::1]
    l2: bool,
    out: npt.NDArray[np.float32],  # float[::1]
) -> None: ...
