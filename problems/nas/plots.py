"""Pictures of a search: a genotype's cells, and how the architecture weights evolved.

Drawn with matplotlib's Agg backend into PNG files; no system binary (graphviz) needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .genotype import Genotype, input_name
from .operations import PRIMITIVES

COLORS = {
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "skip_connect": "#7f7f7f",
    "sep_conv_3x3": "#d62728",
    "sep_conv_5x5": "#ff7f0e",
    "dil_conv_3x3": "#2ca02c",
    "dil_conv_5x5": "#9467bd",
    "none": "#bbbbbb",
}
STYLES = {
    "max_pool_3x3": ":",
    "avg_pool_3x3": ":",
    "skip_connect": "-.",
    "sep_conv_3x3": "-",
    "sep_conv_5x5": "-",
    "dil_conv_3x3": "--",
    "dil_conv_5x5": "--",
    "none": ":",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("drawing needs matplotlib: pip install -e '.[examples]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _draw_cell(ax, cell: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> None:
    """Inputs on the left, intermediate nodes left to right, the output on the right.

    Each edge's operation is told by its colour and line style, named in the cell's
    legend, so that no label can cover a node or another label.
    """
    nodes = len(cell) // 2
    pos = {0: (0.0, 0.8), 1: (0.0, 0.2)}
    for i in range(nodes):
        pos[2 + i] = (1.0 + i, 0.8 if i % 2 == 0 else 0.2)
    out = (nodes + 1.0, 0.5)
    ax.set_xlim(-0.5, nodes + 1.5)
    ax.set_ylim(-0.15, 1.15)
    ax.set_title(title)
    ax.axis("off")
    # The inputs as math (c with a subscript), the intermediate nodes by number.
    names = {i: input_name(i).removeprefix("node ") for i in range(2 + nodes)}
    names.update({i: f"${names[i]}$" for i in (0, 1)})
    for k, (op, src) in enumerate(cell):
        dst = 2 + k // 2
        rad = 0.2 if k % 2 else -0.2
        ax.annotate(
            "",
            xy=pos[dst],
            xytext=pos[src],
            arrowprops=dict(
                arrowstyle="-|>",
                color=COLORS[op],
                linestyle=STYLES[op],
                lw=2,
                shrinkA=14,
                shrinkB=14,
                connectionstyle=f"arc3,rad={rad}",
            ),
        )
    for node in concat:
        ax.annotate(
            "",
            xy=out,
            xytext=pos[node],
            arrowprops=dict(
                arrowstyle="-|>", color="#bbbbbb", lw=1, shrinkA=14, shrinkB=16, linestyle="--"
            ),
        )
    for node, (x, y) in pos.items():
        ax.text(
            x,
            y,
            names[node],
            ha="center",
            va="center",
            fontsize=10,
            bbox=dict(
                boxstyle="circle,pad=0.4" if node >= 2 else "round,pad=0.4",
                fc="#c6dbef" if node < 2 else "#fdd0a2",
                ec="black",
            ),
        )
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=COLORS[op], linestyle=STYLES[op], lw=2, label=op)
        for op in PRIMITIVES
        if any(op == used for used, _ in cell)
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=4, frameon=False
    )
    ax.text(
        *out,
        "$c_{k}$",
        ha="center",
        va="center",
        fontsize=10,
        bbox=dict(boxstyle="round,pad=0.4", fc="#c7e9c0", ec="black"),
    )


def plot_genotype(genotype: Genotype, path: str | Path, title: str = "") -> Path:
    """Draw the normal and reduction cells: nodes, and edges whose colour and line style
    give the operation (named in each cell's legend)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.16, wspace=0.08)
    _draw_cell(axes[0], genotype.normal, genotype.normal_concat, "normal cell")
    _draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SEPARATED = 0.01
"""How far from 1/8 some operation's weight must move before ``alphas.png`` stops saying
that α has not separated."""


def separation_note(normal: torch.Tensor, reduce: torch.Tensor) -> str | None:
    """``None`` when some operation's weight (softmax of α, any step, either cell) moved
    at least ``SEPARATED`` from the uniform 1/8; else the note ``alphas.png`` shows."""
    both = torch.cat([normal.flatten(), reduce.flatten()]).float()
    spread = float((both - 1.0 / len(PRIMITIVES)).abs().max())
    if spread >= SEPARATED:
        return None
    return (
        f"α has not separated: every weight is within {spread:.4f} of 1/8 (dashed), so the "
        "derived cell is close to a random pick"
    )


def plot_alpha_evolution(
    steps: Sequence[int],
    normal: Sequence[torch.Tensor],
    reduce: Sequence[torch.Tensor],
    path: str | Path,
) -> Path:
    """Softmax of α per edge and operation over the search: one panel per edge, for the
    normal cell (top rows) and the reduction cell (bottom rows).

    A dashed line marks the uniform weight 1/8 that every edge starts from, the y-axis
    always spans at least ±0.02 around it, and when no weight has moved more than
    ``SEPARATED`` from it the figure says that α has not separated: a derived cell
    is then close to a random pick, and the curves' wiggles are noise, not a trend."""
    plt = _pyplot()
    normal_t = torch.stack([w.float().cpu() for w in normal])  # (T, edges, ops)
    reduce_t = torch.stack([w.float().cpu() for w in reduce])
    edges = normal_t.shape[1]
    cols = 7
    rows = 2 * ((edges + cols - 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.6 * cols, 1.9 * rows), sharex=True, sharey=True, squeeze=False
    )
    half = rows // 2
    uniform = 1.0 / len(PRIMITIVES)
    both = torch.cat([normal_t.flatten(), reduce_t.flatten()])
    low = min(float(both.min()), uniform - 0.02)
    high = max(float(both.max()), uniform + 0.02)
    for block, (name, data) in enumerate((("normal", normal_t), ("reduce", reduce_t))):
        for e in range(edges):
            ax = axes[block * half + e // cols][e % cols]
            ax.axhline(uniform, color="0.5", lw=0.8, ls="--")
            for o, op in enumerate(PRIMITIVES):
                ax.plot(list(steps), data[:, e, o].tolist(), color=COLORS[op], lw=1.2, label=op)
            ax.set_title(f"{name} edge {e}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.set_ylim(low, high)
    note = separation_note(normal_t, reduce_t)
    if note is not None:
        fig.suptitle(note, fontsize=10, color="#b2182b", y=0.995)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(PRIMITIVES), fontsize=8)
    fig.supxlabel("architecture update", y=0.04)
    fig.supylabel("softmax(α)")
    # Fixed margins: the panels share their axes, and tight_layout would measure all
    # 28 of them (seconds per search).
    top = 0.95 if note is None else 0.92
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=top, hspace=0.5, wspace=0.08)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
