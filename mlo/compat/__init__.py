"""Bridges from other multilevel-optimization libraries onto mlo's engine.

Each bridge imports its library only when called, so that mlo itself never needs it:
``mlo.from_betty`` (``pip install "mlo[betty]"``) is
[`mlo.compat.betty.from_betty`][mlo.compat.betty.from_betty].
"""
