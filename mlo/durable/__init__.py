"""What makes a run survive a stop: the engine's state and its validated restore
(:mod:`~mlo.durable.state`), atomic checksummed checkpoint files
(:mod:`~mlo.durable.checkpoint`), random number generator states
(:mod:`~mlo.durable.rng`), data orders that resume exactly at any position
(:mod:`~mlo.durable.sampling`), and the guard that keeps non-finite values out of the
parameters and the checkpoints (:mod:`~mlo.durable.finite`)."""

from . import checkpoint, rng, sampling, state

__all__ = ["checkpoint", "rng", "sampling", "state"]
