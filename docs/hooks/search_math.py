"""An mkdocs hook: the search index holds formulas as a reader reads them, not as TeX.

The pages write formulas as ``\\(...\\)`` and ``\\[...\\]``, which KaTeX typesets in the
browser; the search index is built from the same text, so a result's snippet would show
the TeX source. After the build, each formula in ``search/search_index.json`` is rewritten
in plain text with Unicode symbols (``\\(\\theta_D\\)`` → ``θ_D``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SYMBOLS = {
    "alpha": "α",
    "beta": "β",
    "gamma": "γ",
    "delta": "δ",
    "epsilon": "ϵ",
    "varepsilon": "ε",
    "theta": "θ",
    "lambda": "λ",
    "mu": "μ",
    "xi": "ξ",
    "rho": "ρ",
    "sigma": "σ",
    "tau": "τ",
    "phi": "φ",
    "omega": "ω",
    "Delta": "Δ",
    "Sigma": "Σ",
    "ell": "ℓ",
    "nabla": "∇",
    "partial": "∂",
    "cdot": "·",
    "odot": "⊙",
    "times": "×",
    "top": "ᵀ",
    "le": "≤",
    "leq": "≤",
    "ge": "≥",
    "geq": "≥",
    "approx": "≈",
    "to": "→",
    "cup": "∪",
    "in": "∈",
    "sum": "Σ",
    "ldots": "…",
    "dots": "…",
    "infty": "∞",
    "lVert": "‖",
    "rVert": "‖",
    "sqrt": "√",
    "min": "min",
    "max": "max",
    "dim": "dim",
    "quad": " ",
    "qquad": "  ",
}
MATH = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]", re.S)


def plain(tex: str) -> str:
    """A formula's TeX as plain text."""
    text = re.sub(r"\\(?:t|d)?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", tex)
    text = re.sub(r"\\(?:mathrm|text|operatorname|mathrel|hat|tilde|textstyle)\b", "", text)
    text = re.sub(r"\\(?:begin|end)\{[^}]*\}", "", text)
    text = re.sub(r"\\(?:left|right)\b", "", text)
    text = re.sub(r"\\([A-Za-z]+)", lambda m: SYMBOLS.get(m.group(1), m.group(1)), text)
    text = text.replace("\\\\", "; ").replace("&", "").replace("{", "").replace("}", "")
    text = text.replace("\\,", " ").replace("\\;", " ").replace("\\!", "")
    return re.sub(r"\s+", " ", text).strip()


def readable(text: str) -> str:
    """``text`` with every formula in plain text."""
    return MATH.sub(lambda m: plain(m.group(1) if m.group(1) is not None else m.group(2)), text)


def on_post_build(config: Any, **kwargs: Any) -> None:
    index = Path(config["site_dir"]) / "search" / "search_index.json"
    if not index.exists():
        return
    data = json.loads(index.read_text(encoding="utf-8"))
    for doc in data.get("docs", []):
        for key in ("title", "text"):
            if isinstance(doc.get(key), str):
                doc[key] = readable(doc[key])
    index.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
