cdef extern from "engine_debug.h":
    const int ENGINE_DEBUG
