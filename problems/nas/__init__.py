"""Neural architecture search in the DARTS space, shared by every NAS method on mlo.

- ``search_space``: the eight operations, mixed operations, search cells, the supernet,
  and the architecture weights as a module of their own (with PC-DARTS as an option);
- ``genotype``: JSON-serialisable genotypes, the DARTS derivation rule, DARTS_V2;
- ``evaluation``: the network built from a genotype (auxiliary head, drop-path);
- ``data``: CIFAR-10/100, imagefolder and synthetic data, the 50/50 search split;
- ``search``: DARTS as two levels on the engine; ``runner``: search/evaluation loops;
- ``plots``: pictures of cells and of the architecture weights over a search.
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
