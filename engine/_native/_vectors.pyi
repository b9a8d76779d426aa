"""Stub of engine._native._vectors (ext/_vectors.pyx; twin engine/memory/_vectors_py.py)."""

import numpy as np
import numpy.typing as npt

class IdMap:
    def __init__(self, capacity: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def clear(self) -> None: ...
    def put_many(
        self,
        keys: npt.NDArray[np.int64],  # const int64_t[::1]
        values: npt.NDArray[np.int64],  # const int64_t[::1]
    ) -> None: ...
    def get_many(
        self,
        keys: npt.NDArray[np.int64],  # const int64_t[::1]
        out: npt.NDArray[np.int64],  # int64_t[::1]
    ) -> int: ...
    def remove_many(self, keys: npt.NDArray[np.int64]) -> int: ...  # const int64_t[::1]

def check_finite(x: npt.NDArray[np.float32]) -> int: ...  # const float[:, ::1]
def normalize(x: npt.NDArray[np.float32]) -> int: ...  # float[:, ::1]
def filter_bitmap(
    ns: npt.NDArray[np.int32],  # const int32_t[::1]
    code: int,
    alive: npt.NDArray[np.uint8],  # const uint8_t[::1]
    out: npt.NDArray[np.uint8],  # uint8_t[::1]
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
