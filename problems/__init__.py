"""Ready-made multilevel methods built on the mlo engine, one sub-package each, and what
their example programs share.

Methods (each package's ``__init__`` states its levels and edges):

- ``nas``: the DARTS search space, genotypes, evaluation networks, image data, and the
  search and retraining loops every NAS method uses;
- ``lease``: LeaSE, learning by self-explanation (four levels), and its study;
- ``hpo``: per-feature L2 penalties tuned by hypergradient;
- ``reweighting``: Meta-Weight-Net data reweighting;
- ``meta``: MAML and iMAML on sinusoid regression;
- ``teaching``: learning by teaching (three levels).

Shared by the example programs:

- ``cli``: configurations from TOML and flags, one-line errors with exit status 2;
- ``run_folder``: an output folder guarded against overwriting and mixed runs;
- ``launch``: ``torchrun`` start-up, devices, which rank writes;
- ``threads``: torch's CPU threads; ``progress``: the progress display;
- ``report``: mean ± std tables over seeds; ``digits``: scikit-learn's digits, split.
"""
