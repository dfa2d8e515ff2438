"""The documentation site: every public name has a docstring, and ``mkdocs build
--strict`` passes (a broken reference or link fails it)."""

from __future__ import annotations

import inspect
import json
import re
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import mlo
import mlo.solvers
import problems.lease
import problems.nas

from .scripts import ROOT, build_site, load_script, run_child

SURFACES = {
    mlo: mlo.__all__,
    mlo.solvers: [n for n in dir(mlo.solvers) if not n.startswith("_")],
    problems.nas: problems.nas.__all__,
    problems.lease: problems.lease.__all__,
}


def test_every_public_name_has_its_own_docstring():
    missing = []
    for module, names in SURFACES.items():
        for name in names:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or name.startswith("__"):
                continue
            own = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
            if not own or not own.strip():
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"public names without a docstring: {missing}"


def test_the_site_builds_strictly(tmp_path):
    build_site(tmp_path)
    assert (tmp_path / "api" / "mlo" / "index.html").exists()
    assert "hypergradient" in (tmp_path / "api" / "mlo" / "index.html").read_text()
    # Docstrings are Markdown (mkdocstrings): a reST role would show as literal text.
    raw = re.compile(r":(class|meth|func|mod|attr|data|exc|obj|ref):`")
    shown = {
        str(page.relative_to(tmp_path)): raw.findall(page.read_text())
        for page in tmp_path.rglob("*.html")
    }
    assert not {page: roles for page, roles in shown.items() if roles}
    # and cross-references are links: the engine's page links the problem's
    assert 'href="#mlo.Problem"' in (tmp_path / "api" / "mlo" / "index.html").read_text()
    # Every formula of the written pages is math markup (typeset by the KaTeX copy the
    # site ships), not a code span of Greek letters and primes.
    assert not {page: spans for page, spans in math_in_code(tmp_path).items() if spans}
    concepts = (tmp_path / "concepts" / "index.html").read_text()
    assert concepts.count('class="arithmatex"') >= 50
    assert (tmp_path / "assets" / "katex" / "katex.min.js").stat().st_size > 100_000
    assert list((tmp_path / "assets" / "katex" / "fonts").glob("KaTeX_Main-Regular.woff2"))
    # The user surface is apart from the internals, which say what they are.
    user = "".join((tmp_path / "api" / p / "index.html").read_text() for p in ("mlo", "solvers"))
    assert 'id="mlo.parallel.' not in user and 'id="mlo.hypergradient.' not in user
    internals = (tmp_path / "api" / "internals" / "index.html").read_text()
    assert "Not part of the public surface" in internals
    assert 'id="mlo.parallel.distributed.Reducer"' in internals
    # Long code lines wrap in the column; code names in tables stay whole.
    css = (tmp_path / "stylesheets" / "extra.css").read_text()
    assert "pre-wrap" in css and "nowrap" in css and "stylesheets/extra.css" in concepts
    # Every tutorial page shows what its script printed (the .txt the suite compares).
    for page in sorted((ROOT / "docs" / "tutorials").glob("*.md")):
        output = page.with_suffix(".txt")
        assert output.exists(), f"{page.name} has no output file"
        html = (tmp_path / "tutorials" / page.stem / "index.html").read_text()
        first = next(line for line in output.read_text().splitlines() if line.strip())
        assert escape(first.strip(), quote=False) in html, (page.name, first)
    # Search snippets show formulas as text (docs/hooks/search_math.py), not as TeX.
    index = json.loads((tmp_path / "search" / "search_index.json").read_text())
    texts = [doc["text"] for doc in index["docs"]]
    assert not [t for t in texts if "\\(" in t or "\\[" in t]
    assert any("∂θ" in t.replace(" ", "") for t in texts)


MATH_CHARACTERS = re.compile(r"[θ∂ᵀ⁻¹Σ∇‖ξλ≈≤≥∈²ρα½εμ∪δ⊙ℓ]")


class _InlineCode(HTMLParser):
    """The text of every inline ``<code>`` (not inside ``<pre>``) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.in_pre, self.text, self.spans = 0, None, []

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self.in_pre += 1
        elif tag == "code" and not self.in_pre:
            self.text = []

    def handle_endtag(self, tag):
        if tag == "pre":
            self.in_pre -= 1
        elif tag == "code" and self.text is not None:
            self.spans.append("".join(self.text))
            self.text = None

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)


def math_in_code(site: Path) -> dict[str, list[str]]:
    """Per page (written pages and the API pages generated from docstrings), the inline
    code spans that hold mathematical symbols: formulas that should be math markup."""
    found = {}
    for page in site.rglob("index.html"):
        parser = _InlineCode()
        parser.feed(page.read_text())
        found[str(page.relative_to(site))] = [s for s in parser.spans if MATH_CHARACTERS.search(s)]
    return found


def test_the_first_tutorial_prints_what_its_page_shows_and_draws_its_plot(tmp_path, capsys):
    # Its page includes first_bilevel.txt as the run's output (and first_bilevel.png, the
    # plot of the same numbers): regenerate both with
    # python docs/tutorials/first_bilevel.py docs/tutorials, moving the plot, when this fails.
    tutorial = load_script(ROOT / "docs" / "tutorials" / "first_bilevel.py")
    losses = tutorial.main(tmp_path)
    printed_as_its_page_shows("first_bilevel", capsys)
    assert (tmp_path / "validation_loss.png").stat().st_size > 0
    assert 0.0 < losses["last"] < losses["first"] < 10.0
    page = (ROOT / "docs" / "tutorials" / "first_bilevel.md").read_text()
    assert "first_bilevel.txt" in page and "first_bilevel.png" in page


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
ROUNDING = 1e-12
"""Numbers below this in magnitude are rounding (an error at machine precision): which
digits a CPU prints there depends on its kernels, not on the code."""


def output_differences(printed: str, shown: str, free: str | None = None) -> list[str]:
    """The lines where ``printed`` differs from ``shown`` by more than another machine's
    rounding: the same lines and words, and the same numbers to 1e-3 relative (both
    below ``ROUNDING`` counts as the same). Text matching the regular expression ``free``
    may differ (what rounding decides on that page)."""
    got, want = printed.splitlines(), shown.splitlines()
    if len(got) != len(want):
        return [f"{len(got)} lines printed, {len(want)} shown"]
    found = []
    for a, b in zip(got, want):
        if free is not None:
            a, b = re.sub(free, "<free>", a), re.sub(free, "<free>", b)
        words_a, words_b = NUMBER.split(a), NUMBER.split(b)
        numbers_a, numbers_b = NUMBER.findall(a), NUMBER.findall(b)
        same = words_a == words_b and all(
            (abs(float(x)) < ROUNDING and abs(float(y)) < ROUNDING)
            or abs(float(x) - float(y)) <= 1e-3 * max(abs(float(x)), abs(float(y)))
            for x, y in zip(numbers_a, numbers_b)
        )
        if not same:
            found.append(f"printed {a!r}, shown {b!r}")
    return found


def test_output_differences_allow_rounding_and_nothing_else():
    shown = "cg(8)   relative error 1.47e-16\nloss 0.2500 after 10 steps\n"
    assert (
        output_differences("cg(8)   relative error 9.1e-17\nloss 0.25002 after 10 steps\n", shown)
        == []
    )
    assert output_differences("cg(8)   relative error 2.0e-10\nloss 0.2500 after 10 steps\n", shown)
    assert output_differences(
        "cg(8)   relative error 1.47e-16\nloss 0.2510 after 10 steps\n", shown
    )
    assert output_differences(
        "cg(9)   relative error 1.47e-16\nloss 0.2500 after 10 steps\n", shown
    )
    assert output_differences("cg(8)   relative error 1.47e-16\n", shown)
    assert output_differences("op skip_connect←node 0\n", "op max_pool_3x3←node 1\n")
    free = r"skip_connect|max_pool_3x3|node \d"
    assert output_differences("op skip_connect←node 0\n", "op max_pool_3x3←node 1\n", free) == []


def printed_as_its_page_shows(name: str, capsys, free: str | None = None) -> None:
    """What tutorial ``name`` printed is the output its page includes
    (docs/tutorials/NAME.txt; regenerate with python docs/tutorials/NAME.py > that file),
    up to another machine's rounding (``output_differences``)."""
    printed = capsys.readouterr().out
    shown = (ROOT / "docs" / "tutorials" / f"{name}.txt").read_text()
    assert output_differences(printed, shown, free) == [], printed
    assert f"{name}.txt" in (ROOT / "docs" / "tutorials" / f"{name}.md").read_text()


def test_the_second_tutorial_prints_the_nested_and_the_partial_answer(capsys):
    tutorial = load_script(ROOT / "docs" / "tutorials" / "three_levels.py")
    answers = tutorial.main()
    printed_as_its_page_shows("three_levels", capsys)
    assert abs(answers["total"] - (-0.75)) < 1e-12
    assert abs(answers["partial"] - (-1.5)) < 1e-12


def test_the_betty_tutorial_trains_to_bettys_parameters(capsys):
    tutorial = load_script(ROOT / "docs" / "tutorials" / "from_betty.py")
    result = tutorial.main()
    # Betty's own set-up log (time-stamped lines) is left out of the page's copy.
    printed = capsys.readouterr().out
    kept = [line for line in printed.splitlines() if line and not line.startswith("[20")]
    shown = (ROOT / "docs" / "tutorials" / "from_betty.txt").read_text()
    assert output_differences("\n".join(kept) + "\n", shown) == [], printed
    assert "from_betty.txt" in (ROOT / "docs" / "tutorials" / "from_betty.md").read_text()
    assert result["difference"] < 1e-12  # the same neumann math on the same data
    assert result["ticks"] == 20  # 100 classifier updates, 5 per hyper update
    assert 0.5 < result["val_accuracy"] <= 1.0


def test_the_solver_tutorial_converges_to_the_closed_form(capsys):
    tutorial = load_script(ROOT / "docs" / "tutorials" / "own_solver.py")
    errors = tutorial.main()
    printed_as_its_page_shows("own_solver", capsys)
    sweep = [errors[f"steepest_descent({k})"] for k in (2, 10, 50, 200)]
    assert sweep == sorted(sweep, reverse=True) and sweep[-1] < 1e-13
    assert errors["by name"] == errors["steepest_descent(50)"] < 1e-10
    assert errors["cg(8)"] < 1e-14
    assert 1e-3 < errors["residual after 2"] < 1.0


@pytest.mark.slow
def test_the_lease_tutorial_searches_extends_and_evaluates(tmp_path, capsys):
    # Its page includes lease.txt as the run's output and the shipped search's pictures
    # (lease_cells.png, lease_alphas.png): regenerate them with
    # python docs/tutorials/lease.py --out OUT > docs/tutorials/lease.txt, copying
    # OUT/pgd/cells.png and OUT/pgd/alphas.png, when this fails.
    tutorial = load_script(ROOT / "docs" / "tutorials" / "lease.py")
    result = tutorial.main(tmp_path)  # the page's budget: 4 architecture updates
    # With 4 architecture updates the architecture weights are still within rounding of
    # their start (the page shows it), so which operations and inputs the derived cells
    # take, and so the retrained cell's error, is up to the CPU's rounding.
    ops = "|".join(re.escape(op) for op in problems.nas.PRIMITIVES)
    chosen = rf"(?:{ops})←(?:c_\{{k-[12]\}}|node \d)|error of the retrained cell .*"
    printed_as_its_page_shows("lease", capsys, free=chosen)
    for run in ("shipped", "extended"):
        files = result[run].files
        for name in ("genotype", "cells", "alphas", "checkpoint"):
            assert files[name].stat().st_size > 0, (run, name)
        assert result[run].steps == 4
    saved = torch.load(tmp_path / "extended" / "checkpoint.pt", weights_only=True)
    shipped = torch.load(tmp_path / "pgd" / "checkpoint.pt", weights_only=True)
    method = "lease.explanation.method"
    assert saved["extra"]["settings"][method] == "gradient_x_input"
    assert shipped["extra"]["settings"].get(method) != "gradient_x_input"
    # The extended search's audience is the tutorial's CNN, not a ResNet.
    audience = saved["engine"]["problems"]["audience"]["module"]
    assert any(key.startswith("features.") for key in audience)
    assert 0.0 <= result["evaluation"].test_error <= 1.0
    page = (ROOT / "docs" / "tutorials" / "lease.md").read_text()
    assert "lease_cells.png" in page and "lease_alphas.png" in page


def test_the_home_pages_example_prints_what_the_page_shows():
    # The home page includes docs/quickstart.txt as the example's output: a change to the
    # example, or to what the engine prints, fails here until the file is regenerated
    # python docs/quickstart.py > docs/quickstart.txt.
    done = run_child([sys.executable, "docs/quickstart.py"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = (ROOT / "docs" / "quickstart.txt").read_text()
    assert output_differences(done.stdout, shown) == [], done.stdout
    index = (ROOT / "docs" / "index.md").read_text()
    assert '--8<-- "docs/quickstart.py"' in index and '--8<-- "docs/quickstart.txt"' in index
