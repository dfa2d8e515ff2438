"""The benchmark suite's runner: it runs the scripts as a user would, writes one page with
their output and plots, and writes nothing when a script fails."""

from __future__ import annotations

import sys

import pytest

from ..scripts import ROOT, load_script

PATH = ROOT / "benchmarks" / "suite.py"


def run_suite(monkeypatch, *argv: str):
    """The suite's module, with ``argv`` as its command line."""
    suite = load_script(PATH)
    monkeypatch.setattr(sys, "argv", ["suite.py", *argv])
    return suite


@pytest.mark.slow
def test_a_quick_run_writes_the_page_and_a_rerun_replaces_only_its_section(monkeypatch, tmp_path):
    run_suite(monkeypatch, "--quick", "--only", "overhead", "--out", str(tmp_path)).main()
    run_suite(monkeypatch, "--quick", "--only", "accuracy", "--out", str(tmp_path)).main()
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks") and "torch" in text
    assert "Quick smoke run" in text
    assert ": `python benchmarks/overhead.py --rounds 3 --n 64`" in text  # kept
    assert "first_order" in text and "cg" in text  # the overhead table, every solver
    assert text.index("## Per-update overhead") < text.index("## Hypergradient accuracy")
    assert "![Hypergradient accuracy against Hessian-vector products](accuracy.png)" in text
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "accuracy_mlp.png").stat().st_size > 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accuracy.png", "accuracy_mlp.png", "benchmarks.md"]


def test_a_failing_script_stops_the_suite_and_writes_nothing(monkeypatch, tmp_path, capsys):
    suite = run_suite(monkeypatch, "--quick", "--out", str(tmp_path / "out"))
    broken = suite.Benchmark("broken", "Broken", "no_such_script.py", "fails", [], [])
    monkeypatch.setattr(suite, "SUITE", [broken])
    with pytest.raises(SystemExit, match=r"error: benchmarks/no_such_script.py failed"):
        suite.main()
    assert not (tmp_path / "out").exists()


def test_an_aligned_table_in_a_scripts_output_becomes_a_markdown_table(monkeypatch):
    suite = run_suite(monkeypatch)
    output = "\n".join(
        [
            "dense chain, dim 8, 2 rounds",
            "levels   partial ms/tick   Betty ms/tick",
            "     2              0.46            0.63",
            "     3              0.78            1.25",
            "plot: docs/depth.png",
        ]
    )
    assert suite.formatted(output) == "\n".join(
        [
            "```text",
            "dense chain, dim 8, 2 rounds",
            "```",
            "",
            "| levels | partial ms/tick | Betty ms/tick |",
            "|---|---|---|",
            "| 2 | 0.46 | 0.63 |",
            "| 3 | 0.78 | 1.25 |",
            "",
            "```text",
            "plot: docs/depth.png",
            "```",
        ]
    )
    # a line of figures is not taken for a header, and two lines are not a table
    assert "|" not in suite.formatted("  mlo   median   1.0 ms\n  hand   median   1.1 ms")


def test_the_committed_page_says_what_the_suite_would_write():
    # The page is the suite's output: a section's text edited by hand on the page, not in
    # the suite, would be lost the next time the suite rewrites that section.
    suite = load_script(PATH)
    sections = suite.existing_sections(ROOT / "docs" / "benchmarks.md")
    for bench in suite.SUITE:
        assert bench.title in sections, bench.title
        assert sections[bench.title].split("\n\n")[1] == bench.what, bench.title
