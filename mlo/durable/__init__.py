"""What makes a run survive a stop: the engine's state and its validated restore
(``state``), atomic checksummed checkpoint files
(``checkpoint``), random number generator states
(``rng``), data orders that resume exactly at any position
(``sampling``), and the guard that keeps non-finite values out of the
parameters and the checkpoints (``finite``)."""

from . import checkpoint, rng, sampling, state

__all__ = ["checkpoint", "rng", "sampling", "state"]
