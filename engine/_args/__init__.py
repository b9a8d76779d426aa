"""Argument checks and input syntax shared by a Python face and its compiled twin.

Leaf modules: they import only :mod:`engine.errors` and numpy, so a compiled module
(``ext/*.pyx``) imports them without importing the face that chooses it
(``engine.routing``, ``engine.scheduling``), and bad input fails identically in both twins.
"""
