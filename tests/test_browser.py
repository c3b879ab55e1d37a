"""The demo report in a real browser: headless Chromium driven by Playwright, from file:// and
through `neuronscope serve`. Every image loads, nothing is logged as an error, nothing is fetched
from the network, the shortcut finding is on the overview, and overview -> layer -> unit -> back
works. A screenshot of each page kind is written to test-artifacts/browser/.

CI (``.ci/run``) installs Chromium and sets NEURONSCOPE_REQUIRE_BROWSER=1, so there a missing
browser fails; elsewhere these tests skip and say how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    how = ("install it with `apt-get install chromium` (Debian) and `pip install playwright` (in the test extra); "
           "the tests drive the system browser, no Playwright download is needed")
    if exe is None:
        if os.environ.get("NEURONSCOPE_REQUIRE_BROWSER"):
            pytest.fail(f"No Chromium on this machine, and CI requires the browser tests: {how}.")
        pytest.skip(f"No Chromium here: {how}.")
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        if os.environ.get("NEURONSCOPE_REQUIRE_BROWSER"):
            pytest.fail(f"Playwright is not installed: {how}.")
        pytest.skip(f"Playwright is not installed: {how}.")
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=FLAGS)
        yield b
        b.close()


class Visit:
    """One browser page that records console errors, failed requests and every URL requested."""

    def __init__(self, browser, base: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.base, self.errors, self.requests = base, [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: str):
        self.page.goto(self.base + path)
        self.settle()

    def settle(self):
        # lazy images load when scrolled to: make them all load, then check each one
        self.page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=20_000)

    def broken_images(self) -> list[str]:
        return self.page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")

    def shot(self, name: str):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _walk(browser, base: str, label: str, report: Path):
    v = Visit(browser, base)
    v.open("index.html")
    v.shot(f"{label}-demo-index")
    v.page.click("a[href='shapes/index.html']")
    v.settle()
    assert v.page.url.endswith("shapes/index.html")
    found = json.loads((report / "shapes" / "findings.json").read_text())
    shortcut = next(f for f in found if f["kind"] == "shortcut")
    assert shortcut["text"] in v.page.inner_text("ul.findings"), "the shortcut finding is on the overview"
    v.shot(f"{label}-overview")
    pages = {"overview": v.page.url}
    # overview -> layers -> layer relu3 (sorted by selectivity) -> unit -> back
    v.page.click("nav a[href='examples.html']")
    v.settle()
    v.shot(f"{label}-layers")
    v.page.click("section#relu3 h2 a")
    v.settle()
    assert v.page.url.endswith("shapes/layers/relu3.html")
    v.page.click(".sorter button[data-key=sel]")  # the layer grid sorts in place
    sel = v.page.eval_on_selector_all("#grid a.unit", "cards => cards.map(c => parseFloat(c.dataset.sel))")
    assert sel == sorted(sel, reverse=True) and len(sel) == 64
    v.shot(f"{label}-layer")
    v.page.click("#grid a.unit >> nth=0")
    v.settle()
    assert "/units/relu3/" in v.page.url
    v.shot(f"{label}-unit")
    unit_url = v.page.url
    v.page.go_back()
    v.settle()
    assert v.page.url.endswith("shapes/layers/relu3.html")
    pages["unit"] = unit_url
    for name in ("featvis", "attribution", "shortcuts", "directions", "filters", "sanity", "methods"):
        v.open(f"shapes/{name}.html")
        assert not v.broken_images(), (name, v.broken_images())
        v.shot(f"{label}-{name}")
    v.open("shapes/units/relu3/nmf3.html")
    v.shot(f"{label}-direction-unit")
    v.open("cancer_mlp/tabular.html")
    v.shot(f"{label}-columns")
    for url in pages.values():
        v.page.goto(url)
        v.settle()
        assert not v.broken_images(), (url, v.broken_images())
    assert not v.errors, v.errors
    outside = [u for u in v.requests if not (u.startswith("file://") or u.startswith("http://127.0.0.1"))
               and not u.startswith("data:")]
    assert not outside, f"the report asked the network for {outside[:5]}"
    v.page.close()


def test_the_demo_report_works_from_disk(browser, demo_report):
    _walk(browser, demo_report.resolve().as_uri() + "/", "file", demo_report)


def test_the_demo_report_works_through_serve(browser, demo_report):
    from neuronscope.website.serve import make_server

    httpd = make_server(demo_report, port=0, log=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        assert httpd.server_address[0] == "127.0.0.1"
        _walk(browser, f"http://127.0.0.1:{httpd.server_address[1]}/", "serve", demo_report)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_sorting_a_wide_layer_covers_all_its_pages(browser, wide_report):
    """600 units on three pages: a sort on page 2 reorders the whole layer, 256 cards at a time."""
    from neuronscope.store import Store

    units = Store(wide_report).table("examples", "units")
    best = max(s if s is not None else -1 for s in units["selectivity"])
    v = Visit(browser, wide_report.resolve().as_uri() + "/")
    v.open("layers/1-2.html")
    assert v.page.eval_on_selector_all("#grid a.unit", "c => c.length") == 256
    v.page.click(".sorter button[data-key=sel]")
    v.page.wait_for_function("document.getElementById('showing').textContent.startsWith('Showing')")
    sel = v.page.eval_on_selector_all("#grid a.unit", "cards => cards.map(c => parseFloat(c.dataset.sel))")
    assert len(sel) == 256 and sel == sorted(sel, reverse=True) and sel[0] == pytest.approx(best, abs=1e-6)
    v.page.click("#more")
    v.page.click("#more")
    index = v.page.eval_on_selector_all("#grid a.unit", "cards => cards.map(c => parseInt(c.dataset.index))")
    assert sorted(index) == list(range(600)), "every unit once, after two 'show more'"
    assert v.page.is_hidden("#more")
    v.page.click(".sorter button[data-key=index]")
    assert v.page.eval_on_selector_all("#grid a.unit", "c => c.slice(0, 3).map(x => x.dataset.index)") == ["0", "1", "2"]
    v.shot("file-wide-layer")
    assert not v.errors, v.errors
    v.page.close()
