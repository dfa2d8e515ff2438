"""The documentation site as a browser shows it (headless Chromium): the formulas are
typeset by KaTeX, offline, and a search shows its results."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time

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


@pytest.fixture(scope="module")
def served(site):
    """The site over HTTP on a free local port (search runs in a web worker, which a
    file:// page does not start)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_search_shows_its_results(served, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.skip("needs chromedriver (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(served)
        box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
        box.click()
        box.send_keys("hypergradient")
        shown: list = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not shown:
            items = driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item h1")
            shown = [item.text for item in items if item.is_displayed() and item.text]
            time.sleep(0.25)
        meta = driver.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text
        snippets = [
            a.text for a in driver.find_elements(By.CSS_SELECTOR, ".md-search-result__article")
        ]
    finally:
        driver.quit()
    assert "matching documents" in meta, meta
    assert any("hypergradient" in title.lower() for title in shown), shown
    # The snippets show formulas as text, not TeX (docs/hooks/search_math.py).
    assert snippets and not [t for t in snippets if "\\(" in t or "\\frac" in t], snippets
