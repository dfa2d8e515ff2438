"""The documentation site as a browser shows it (headless Chromium): the formulas are
typeset by KaTeX, offline, and no code line runs past the column."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .scripts import build_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build_site(out)
    return out


def rendered(site, page: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, at 1280 px."""
    done = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (site / page / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("page", ["concepts", "lease", "tutorials/three_levels"])
def test_every_formula_is_typeset(site, page, tmp_path):
    dom = rendered(site, page, tmp_path)
    marked = dom.count('class="arithmatex"')
    assert marked > 0
    # KaTeX replaced each marked formula's TeX with its rendering: none is left as TeX.
    assert dom.count('class="katex"') + dom.count('class="katex-display"') >= marked
    assert "\\(" not in dom.split("<body", 1)[1].split("<script", 1)[0]
