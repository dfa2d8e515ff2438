"""A NAS study: LeaSE's variants against DARTS and a random cell, over seeds.

For each method and seed: search (except ``random``), derive the genotype, retrain it
from scratch with the evaluation network, record test error, parameters and search time.
The report is a table of mean ± std per method and a paired comparison of each method
with ``darts`` on the same seeds. ``examples/lease_study.py`` runs it.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from mlo.options import NumbersNotBooleans
from problems.nas.config import Dataset, EvalRun

from ..cli import OutFolder
from .audience import AudienceArch
from .config import LeaseRun

Method = Literal["lease", "lease-sign", "lease-saliency", "lease-author", "darts", "random"]
METHODS: dict[str, str] = {
    "lease": "LeaSE, differentiable PGD explanations (the default)",
    "lease-sign": "LeaSE, sign-PGD explanations (no audience gradient reaches A)",
    "lease-saliency": "LeaSE, saliency explanations",
    "lease-author": "the setting of the authors' public code (LeaseHyper.author)",
    "darts": "DARTS (second order) with the same budget",
    "random": "a random cell from the same space (no search)",
}


class StudySearch(NumbersNotBooleans):
    """The search budget every searching method gets (DARTS' CIFAR settings by default)."""

    model_config = ConfigDict(extra="forbid")

    layers: int = Field(8, ge=1)
    init_channels: int = Field(16, ge=2)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1, description="architecture updates per search")
    pgd_steps: int = Field(7, ge=1)
    audience: AudienceArch = "resnet18"
    arch_lr: float = Field(3e-4, gt=0, description="architecture Adam learning rate")
    log_every: int | None = Field(None, ge=1, description="default: about 20 records a run")


class StudyEvaluate(NumbersNotBooleans):
    """Retraining each derived cell from scratch (DARTS' CIFAR settings by default)."""

    model_config = ConfigDict(extra="forbid")

    layers: int = Field(20, ge=1)
    init_channels: int = Field(36, ge=2)
    batch_size: int = Field(96, ge=1)
    epochs: int = Field(600, ge=1)
    lr: float = Field(0.025, gt=0)
    cutout: int = Field(16, ge=0)
    auxiliary_weight: float = Field(0.4, ge=0)
    drop_path: float = Field(0.2, ge=0, lt=1)


class StudyRun(NumbersNotBooleans):
    """``examples/lease_study.py``: methods × seeds on one dataset."""

    model_config = ConfigDict(extra="forbid")

    methods: list[Method] = Field(default_factory=lambda: list(METHODS), min_length=1)

    @field_validator("methods")
    @classmethod
    def _each_method_once(cls, value: list[str]) -> list[str]:
        twice = sorted({m for m in value if value.count(m) > 1})
        if twice:
            raise ValueError(
                f"{', '.join(twice)} listed more than once; a method's runs are its seeds "
                "(--seeds), so name each method once"
            )
        return value

    seeds: int = Field(3, ge=1, description="seeds 0 .. seeds-1")
    dataset: Dataset = "cifar10"
    data_dir: Path = Path("data")
    download: bool = True
    image_size: int | None = Field(None, ge=8)
    out: OutFolder = Path("runs/study")
    device: str = "auto"
    workers: int = Field(2, ge=0)
    amp: bool = False
    channels_last: bool = False
    progress: bool = True
    search: StudySearch = StudySearch()
    evaluate: StudyEvaluate = StudyEvaluate()

    def run_folder(self, method: str, seed: int) -> Path:
        return self.out / method / f"seed{seed}"

    def _common(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "download": self.download,
            "image_size": self.image_size,
            "device": self.device,
            "workers": self.workers,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "progress": self.progress,
        }

    def search_config(self, method: str, seed: int, resume: bool) -> LeaseRun:
        """The search of one run; ``method`` is any of ``METHODS`` but ``random``."""
        s = self.search
        explanation: dict[str, Any] = {"steps": s.pgd_steps}
        if method == "lease-sign":
            explanation["differentiable"] = False
        if method == "lease-saliency":
            explanation["method"] = "saliency"
        config = LeaseRun.model_validate(
            {
                **self._common(),
                "out": self.run_folder(method, seed) / "search",
                "seed": seed,
                "resume": resume,
                "overwrite": not resume,  # a run killed before its first checkpoint restarts
                "layers": s.layers,
                "init_channels": s.init_channels,
                "batch_size": s.batch_size,
                "epochs": s.epochs,
                "max_steps": s.max_steps,
                "log_every": s.log_every,
                "baseline": "darts" if method == "darts" else "none",
                "hyper": {"arch_lr": s.arch_lr},
                "lease": {
                    "explanation": explanation,
                    "audience": {"arch": s.audience},
                    "author_setting": method == "lease-author",
                },
            }
        )
        return config.effective()

    def evaluate_config(
        self,
        method: str,
        seed: int,
        genotype: Path,
        resume: bool,
        retrain_seed: int | None = None,
    ) -> EvalRun:
        """The retraining of run ``(method, seed)``'s cell; with ``retrain_seed``, the same
        cell retrained from another seed, in ``<run>/retrain/seed<retrain_seed>``."""
        e = self.evaluate
        folder = self.run_folder(method, seed)
        out = (
            folder / "evaluate"
            if retrain_seed is None
            else self.retrain_folder(method, seed, retrain_seed)
        )
        return EvalRun.model_validate(
            {
                **self._common(),
                **e.model_dump(),
                "genotype": str(genotype),
                "out": out,
                "seed": seed if retrain_seed is None else retrain_seed,
                "resume": resume,
                "overwrite": not resume,
            }
        )

    def retrain_folder(self, method: str, seed: int, retrain_seed: int) -> Path:
        return self.run_folder(method, seed) / "retrain" / f"seed{retrain_seed}"

    def retrained_errors(self, method: str, seed: int) -> dict[int, float]:
        """Test error of run ``(method, seed)``'s cell retrained from each other seed
        (``retrain_folder``'s ``test_error.json``), by retraining seed."""
        errors = {}
        for done in sorted(self.run_folder(method, seed).glob("retrain/seed*/test_error.json")):
            retrain_seed = int(done.parent.name.removeprefix("seed"))
            errors[retrain_seed] = json.loads(done.read_text())["test_error"]
        return errors


# ------------------------------------------------------------------------------ report


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


# Student's t quantiles by degrees of freedom (1 to 30), to three decimals.
T_975 = dict(enumerate((
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
), start=1))  # fmt: skip
T_80 = dict(enumerate((
    1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879,
    0.876, 0.873, 0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860,
    0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854,
), start=1))  # fmt: skip
_NORMAL = {0.975: 1.959964, 0.80: 0.841621}


def _t_quantile(table: dict[int, float], level: float, dof: int) -> float:
    if dof in table:
        return table[dof]
    z = _NORMAL[level]  # past 30: the normal quantile with its first correction
    return z + (z**3 + z) / (4 * dof)


def t_critical(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (2.776 at 4,
    tending to 1.96)."""
    return _t_quantile(T_975, 0.975, dof)


def detectable_difference(std: float, seeds: int) -> float:
    """The paired difference (same units as ``std``) that a two-sided paired t-test at
    5 % detects with about 80 % power over ``seeds`` seeds, when the differences spread
    with standard deviation ``std``: ``(t(0.975, n − 1) + t(0.80, n − 1)) · std / √n``.

    The usual approximation of the noncentral t: its exact power at this difference is
    77 % at 3 seeds, 79 % at 5 and 80 % from 10."""
    dof = seeds - 1
    return (t_critical(dof) + _t_quantile(T_80, 0.80, dof)) * std / math.sqrt(seeds)


def seeds_needed(std: float, difference: float, most: int = 1000) -> int | None:
    """The fewest seeds (at least 2) whose paired t-test detects ``difference`` with about
    80 % power (``detectable_difference``), or ``None`` past ``most``."""
    for seeds in range(2, most + 1):
        if detectable_difference(std, seeds) <= difference:
            return seeds
    return None


def paired_difference(
    results: list[dict[str, Any]], method: str, baseline: str = "darts"
) -> dict[str, Any] | None:
    """Test error of ``method`` minus ``baseline``'s on the seeds both have (in points).

    ``verdict`` is "within noise" unless a two-sided paired t-test at 5 % rejects a zero
    mean difference: ``|mean| > t(0.975, n − 1) · std / √n`` (``t`` = 4.30 for 3 seeds,
    2.78 for 5); with one pair there is no spread, and it says so. ``t`` is the test's
    statistic, ``mean / (std / √n)`` (``None`` when the differences do not spread), and
    ``interval`` the 95 % confidence interval of the mean difference,
    ``mean ± t(0.975, n − 1) · std / √n``: the differences the seeds do not rule out.
    """
    errors: dict[str, dict[int, float]] = {}
    for r in results:
        errors.setdefault(r["method"], {})[r["seed"]] = r["test_error"]
    if method not in errors or baseline not in errors:
        return None
    seeds = sorted(set(errors[method]) & set(errors[baseline]))
    if not seeds:
        return None
    diffs = [100 * (errors[method][s] - errors[baseline][s]) for s in seeds]
    mean, std = _mean_std(diffs)
    t = t_needed = interval = detectable = None
    if len(diffs) < 2:
        verdict = "one seed: no spread to judge by"
    else:
        stderr = std / math.sqrt(len(diffs))
        t_needed = t_critical(len(diffs) - 1)
        half = t_needed * stderr
        interval = (mean - half, mean + half)
        t = mean / stderr if stderr > 0 else None
        if abs(mean) <= half:
            verdict = "within noise"
        else:
            verdict = f"{'lower' if mean < 0 else 'higher'} error than {baseline}"
        detectable = detectable_difference(std, len(diffs))
    return {
        "seeds": seeds,
        "diffs": diffs,
        "mean": mean,
        "std": std,
        "t": t,
        "t_needed": t_needed,
        "interval": interval,
        "verdict": verdict,
        "detectable": detectable,
    }


def study_table(results: list[dict[str, Any]], baseline: str = "darts", target: float = 0.3) -> str:
    """The Markdown report's tables: mean ± std per method, then the paired comparison
    with its power: the difference these seeds detect, and the seeds that a difference of
    ``target`` points would need, both from the observed spread of the differences."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    order = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    lines = [
        "| method | seeds | test error per seed (%) | test error (%) | parameters (M) "
        "| search (s) |",
        "|---|---|---|---|---|---|",
    ]
    for method in order:
        runs = sorted(by_method[method], key=lambda r: r["seed"])
        per_seed = ", ".join(f"{100 * r['test_error']:.2f}" for r in runs)
        err, err_sd = _mean_std([100 * r["test_error"] for r in runs])
        params, params_sd = _mean_std([r["params_millions"] for r in runs])
        search, search_sd = _mean_std([r["search_seconds"] for r in runs])
        lines.append(
            f"| {method} | {len(runs)} | {per_seed} | {err:.2f} ± {err_sd:.2f} | "
            f"{params:.3f} ± {params_sd:.3f} | {search:.0f} ± {search_sd:.0f} |"
        )
    lines += [
        "",
        f"Paired with `{baseline}` on the same seeds (test error difference in points, mean ± "
        "std over seeds; negative is better; t: the paired t statistic, mean / (std / √n), "
        "against the t(0.975, n − 1) it must exceed; 95 % interval: mean ± t(0.975, n − 1) · "
        "std / √n; verdict: the two-sided paired t-test at 5 %; power: the difference these "
        "seeds detect with about 80 % power, (t(0.975, n − 1) + t(0.80, n − 1)) · std / √n, "
        f"and the seeds that a difference of {target} points would need at the same spread):",
        "",
        "| method | seeds | difference | t (needed) | 95 % interval | verdict "
        f"| detectable (80 %) | seeds for {target} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in order:
        if method == baseline:
            continue
        pair = paired_difference(results, method, baseline)
        if pair is None:
            lines.append(
                f"| {method} | 0 | — | — | — | no `{baseline}` run on these seeds | — | — |"
            )
            continue
        if pair["detectable"] is None:
            test = power = "— | —"
        else:
            needed = seeds_needed(pair["std"], target)
            power = f"{pair['detectable']:.2f} | {needed if needed is not None else 'over 1000'}"
            t = "—" if pair["t"] is None else _signed(pair["t"])
            low, high = pair["interval"]
            test = f"{t} ({pair['t_needed']:.2f}) | {_signed(low)} to {_signed(high)}"
        lines.append(
            f"| {method} | {len(pair['seeds'])} | {_signed(pair['mean'])} ± "
            f"{pair['std']:.2f} | {test} | {pair['verdict']} | {power} |"
        )
    return "\n".join(lines) + "\n"


def pooled_std(groups: list[list[float]]) -> tuple[float, int]:
    """The pooled standard deviation of groups of repeated measurements (each group's own
    mean removed) and its degrees of freedom, ``Σ (k_i − 1)``; groups of one add nothing."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return 0.0, 0
    squares = sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1)
    return math.sqrt(squares / dof), dof


def retraining_table(
    results: list[dict[str, Any]],
    retrained: dict[tuple[str, int], dict[int, float]],
    baseline: str = "darts",
    target: float = 0.3,
    repeats: int = 3,
) -> str:
    """The report's section on retraining noise: each retrained cell's errors (its own run's
    and those from other seeds, ``retrained[(method, seed)] = {seed: test error}``), the
    pooled standard deviation ``σ`` of one retraining, and what it implies for each
    pairing with ``baseline``.

    A paired difference holds two retrainings, so retraining alone gives it a variance
    of ``2σ²``; the rest, ``max(s² − 2σ², 0)`` for an observed spread ``s``, is the
    search's. Averaging ``repeats`` retrainings per cell leaves
    ``max(s² − 2σ², 0) + 2σ² / repeats``, and the table gives the difference the same
    seeds would detect with it and the seeds ``target`` would need."""
    own = {(r["method"], r["seed"]): 100 * r["test_error"] for r in results}
    groups: list[list[float]] = []
    lines = ["| cell | its own retraining (%) | from other seeds (%) | std |", "|---|---|---|---|"]
    for (method, seed), others in sorted(retrained.items()):
        mine = own.get((method, seed))
        seeds = sorted(others)
        errors = ([] if mine is None else [mine]) + [100 * others[s] for s in seeds]
        groups.append(errors)
        rest = ", ".join(f"{100 * others[s]:.2f} (seed {s})" for s in seeds)
        spread = f"{statistics.stdev(errors):.2f}" if len(errors) > 1 else "—"
        shown = "—" if mine is None else f"{mine:.2f}"
        lines.append(f"| {method} seed {seed} | {shown} | {rest} | {spread} |")
    sigma, dof = pooled_std(groups)
    if dof == 0:
        return "\n".join(lines) + "\n\nNo cell has two retrainings yet: no spread to pool.\n"
    lines += [
        "",
        f"One retraining's standard deviation, pooled over the cells: {sigma:.2f} points "
        f"({dof} degree{'' if dof == 1 else 's'} of freedom). A paired difference holds two "
        "retrainings, so retraining alone gives it a variance of "
        f"2σ² = {2 * sigma**2:.2f}; the rest is the search's. With {repeats} retrainings "
        "averaged per cell (the same estimate):",
        "",
        f"| method | observed variance | retraining's share | std with {repeats} "
        f"| detectable (80 %) | seeds for {target} |",
        "|---|---|---|---|---|---|",
    ]
    for method in [m for m in METHODS if m != baseline]:
        pair = paired_difference(results, method, baseline)
        if pair is None or pair["detectable"] is None:
            continue
        observed, retraining = pair["std"] ** 2, 2 * sigma**2
        std = math.sqrt(max(observed - retraining, 0.0) + retraining / repeats)
        share = f"{100 * min(retraining / observed, 1.0):.0f} %" if observed > 0 else "—"
        needed = seeds_needed(std, target)
        lines.append(
            f"| {method} | {observed:.2f} | {share} | {std:.2f} "
            f"| {detectable_difference(std, len(pair['seeds'])):.2f} "
            f"| {needed if needed is not None else 'over 1000'} |"
        )
    return "\n".join(lines) + "\n"


def _signed(value: float) -> str:
    """Two decimals with a sign, and no "-0.00"."""
    return f"{round(value, 2) + 0.0:+.2f}"


def plot_study(results: list[dict[str, Any]], path: Path, baseline: str = "darts") -> None:
    """Left: test error per method, one marker per seed, with the mean as a bar. Right,
    when ``baseline`` has runs: each method's paired differences with it, one marker per
    seed, with the mean and its 95 % confidence interval (``paired_difference``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    pairs = {m: paired_difference(results, m, baseline) for m in methods if m != baseline}
    pairs = {m: p for m, p in pairs.items() if p is not None}
    seeds = sorted({r["seed"] for r in results})
    colour = {seed: f"C{i % 10}" for i, seed in enumerate(seeds)}

    def offset(seed: int) -> float:  # the seeds' markers spread around the bar's centre
        return 0.1 * (seeds.index(seed) - (len(seeds) - 1) / 2)

    panels = [len(methods)] + ([len(pairs)] if pairs else [])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.4 * sum(panels) + 2.5 * len(panels), 3.8),
        width_ratios=[n + 1.5 for n in panels], squeeze=False,
    )  # fmt: skip
    ax = axes[0][0]
    for i, method in enumerate(methods):
        runs = [r for r in results if r["method"] == method]
        ax.bar(i, statistics.mean(100 * r["test_error"] for r in runs), color="#dde6f0", width=0.6)
        for r in runs:
            ax.scatter(i + offset(r["seed"]), 100 * r["test_error"], color=colour[r["seed"]],
                       zorder=3, s=18)  # fmt: skip
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("test error (%)")
    ax.set_title("test error (bars: mean; points: seeds)")
    if pairs:
        ax = axes[0][1]
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        for i, pair in enumerate(pairs.values()):
            for seed, diff in zip(pair["seeds"], pair["diffs"]):
                ax.scatter(i + offset(seed), diff, color=colour[seed], zorder=3, s=18)
            if pair["interval"] is not None:
                low, high = pair["interval"]
                ax.errorbar(i, pair["mean"], yerr=[[pair["mean"] - low], [high - pair["mean"]]],
                            fmt="_", color="k", capsize=6, markersize=14, zorder=4)  # fmt: skip
        ax.set_xticks(range(len(pairs)), list(pairs), rotation=20)
        ax.set_ylabel(f"test error − {baseline}'s (points)")
        ax.set_title(f"paired with {baseline} (bar: mean, 95 % interval)")
    for seed in seeds:  # one legend entry per seed
        fig.axes[0].scatter([], [], color=colour[seed], s=18, label=f"seed {seed}")
    fig.axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
