"""LeaSE — learning by self-explanation (Hosseini & Xie) — searching a CIFAR cell on mlo.

Formulation (four levels; edges relearn → explainer, relearn → explain,
explainer → explain, explain → audience):

    explainer:  W*(A)     = argmin_W  CE(f(x; A, W), y)                        x ∈ D_tr
    explain:    E*(A, W*) = PGD explanations of f on the audience's examples x ∈ D_tr
    audience:   V*(E)     = argmin_V  CE(g(x; V), y) + γ·CE(g(x ⊙ E; V), y)   same x
    relearn:    min_A  CE(g(x; V*), y) + λ·CE(f(x; A, W*), y)                  x ∈ D_val

f is the DARTS supernet (architecture A, weights W), g a fixed ResNet (weights V); D_tr
and D_val are the two halves of the training set. See docs/lease.md.

    python examples/lease_cifar.py --small                         # a first look (CIFAR-10)
    python examples/lease_cifar.py                                 # 50 epochs, DARTS settings
    python examples/lease_cifar.py --baseline darts                # DARTS, same budget/seed
    python examples/lease_cifar.py evaluate --genotype runs/lease/genotype.json --short

Offline, pass --data-dir to a folder holding cifar-10-batches-py/ (or use --dataset
synthetic for a smoke run that says nothing about accuracy).
"""

from __future__ import annotations

import sys

from problems.cli import ConfigError
from problems.lease import LeaseRun, wire_search
from problems.nas.cli import nas_main
from problems.nas.observe import search_accuracies

EXPLANATIONS = {"pgd": ("pgd", True), "pgd_sign": ("pgd", False), "saliency": ("saliency", True)}


def add_search_flags(search) -> None:
    search.add_argument("--lam", type=float, dest="lease.lam", help="λ (default 1)")
    search.add_argument("--gamma", type=float, dest="lease.gamma", help="γ (default 1)")
    search.add_argument(
        "--explanation",
        choices=list(EXPLANATIONS),
        help="pgd (differentiable, default), pgd_sign (the paper's sign "
        "steps: no gradient to A and W), saliency",
    )
    search.add_argument("--pgd-steps", type=int, dest="lease.explanation.steps")
    search.add_argument("--solver", help="solver of the explainer and audience levels")
    search.add_argument(
        "--audience",
        dest="lease.audience.arch",
        choices=["resnet18", "resnet_small", "resnet_tiny"],
    )
    search.add_argument(
        "--author-setting",
        action="store_const",
        const=True,
        dest="lease.author_setting",
        help="the lease-author preset: the setting of the authors' public code (one sign-PGD "
        "step, audience never trained, A gets only the DARTS gradient)",
    )
    search.add_argument(
        "--baseline",
        choices=["none", "darts"],
        help="darts: the same search without explain and audience",
    )


def translate(flags: dict) -> dict:
    """``--explanation`` and ``--solver`` each set two fields; ``--author-setting`` fixes
    the explanation, so it refuses the flags that would set it otherwise."""
    flags = dict(flags)
    explained = [f for f in ("explanation", "lease.explanation.steps") if f in flags]
    if flags.get("lease.author_setting") and explained:
        names = {"explanation": "--explanation", "lease.explanation.steps": "--pgd-steps"}
        raise ConfigError(
            f"--author-setting fixes the explanation (one sign-PGD step, as in the authors' "
            f"code), so {' and '.join(names[f] for f in explained)} would not apply; drop "
            "one or the other"
        )
    if "explanation" in flags:
        method, differentiable = EXPLANATIONS[flags.pop("explanation")]
        flags["lease.explanation.method"] = method
        flags["lease.explanation.differentiable"] = differentiable
    if "solver" in flags:
        solver = flags.pop("solver")
        flags["lease.explainer_solver"] = flags["lease.audience_solver"] = solver
    return flags


def main(argv: list[str] | None = None) -> int:
    return nas_main(
        argv,
        description=__doc__.split("\n")[0],
        search_model=LeaseRun,
        add_search_flags=add_search_flags,
        wire=wire_search,
        accuracy_of=search_accuracies,
        title_of=lambda c: "DARTS baseline" if c.baseline == "darts" else "LeaSE search",
        translate=translate,
        eval_defaults={"out": "runs/lease_evaluate"},
    )


if __name__ == "__main__":
    sys.exit(main())
