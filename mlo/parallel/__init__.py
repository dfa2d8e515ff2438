"""Training on several processes under ``torchrun``, composed by the engine:
cross-rank averages and agreements (:mod:`~mlo.parallel.distributed`), fully sharded
levels (:mod:`~mlo.parallel.sharding`), and a batch norm over the global batch that can
be differentiated to any order (:mod:`~mlo.parallel.sync_batchnorm`)."""

from . import distributed, sharding, sync_batchnorm

__all__ = ["distributed", "sharding", "sync_batchnorm"]
