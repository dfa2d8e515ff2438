"""Neural architecture search in the DARTS space, shared by every NAS method on mlo.

The method:

- ``operations``, ``search_space``: the eight operations, mixed operations, search cells,
  the supernet, and the architecture weights as a module of their own (PC-DARTS optional);
- ``genotype``: JSON-serialisable genotypes, the DARTS derivation rule, DARTS_V2;
- ``evaluation``: the network built from a genotype (auxiliary head, drop-path);
  ``flops``: its multiply-adds;
- ``search``: DARTS as two levels on the engine.

Running it:

- ``config``: the search and evaluation configurations (DARTS' settings by default);
- ``data``: CIFAR-10/100, Fashion-MNIST, imagefolder, digits and synthetic data, the
  50/50 search split, resumable loaders;
- ``run_setup``: seeds, device, data, the run folder and resuming, shared by search and
  evaluation; ``runner``: the search; ``loop``: the training loop with progress and
  checkpoints; ``retrain``: retraining a genotype from scratch; ``imagenet``: the mobile
  setting;
- ``observe``: accuracies that change no state; ``plots``: pictures of cells and of the
  architecture weights; ``summary``: the tables printed at the end; ``cli``: the command
  line of ``examples/darts_cifar.py`` and ``examples/lease_cifar.py``.
"""

from .data import NasDataError, load_images, loader, search_split
from .evaluation import EvalNetwork, count_parameters
from .genotype import DARTS_V2, Genotype, derive_genotype, genotype_from, random_genotype
from .operations import PRIMITIVES
from .search import Architecture, SearchHyper, SupernetWeights, build_darts
from .search_space import ArchitectureWeights, MixedOp, SearchCell, Supernet

__all__ = [
    "DARTS_V2",
    "PRIMITIVES",
    "Architecture",
    "ArchitectureWeights",
    "EvalNetwork",
    "Genotype",
    "MixedOp",
    "NasDataError",
    "SearchCell",
    "SearchHyper",
    "Supernet",
    "SupernetWeights",
    "build_darts",
    "count_parameters",
    "derive_genotype",
    "genotype_from",
    "load_images",
    "loader",
    "random_genotype",
    "search_split",
]
