"""Training on several processes under ``torchrun``, composed by the engine:
cross-rank averages and agreements (``distributed``), fully sharded
levels (``sharding``), and a batch norm over the global batch that can
be differentiated to any order (``sync_batchnorm``)."""

from . import distributed, sharding, sync_batchnorm

__all__ = ["distributed", "sharding", "sync_batchnorm"]
