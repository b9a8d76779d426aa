"""FAISS comes with the ``memory`` extra: imported first by ``engine.memory``, so its absence
is an error naming the extra (``pip install 'agent-engine-runtime[memory]'``)."""

from engine._extras import require

faiss = require("faiss", extra="memory", feature="engine.memory")
