"""The built website, in a real browser: headless Chromium (the OS package, driven by Selenium).

The session fixture builds the book first, with the exact command of ``make book``
(``jupyter-book build -W -n --keep-going .``; incremental, so the ``make book`` that CI runs next
reuses it), serves ``_build/html`` on localhost and blocks every other host, so the test is the
same offline and online. Then it opens the index and every page of ``_toc.yml`` and checks:

* no error from the site's own scripts (JavaScript exceptions or console errors from localhost);
* no missing resource (any 404 the server saw: scripts, styles, images, fonts) and no broken image;
* no broken internal link, including ``#fragments`` that name no element of their page;
* every notebook page has the Colab launch button, pointing where the notebook's badge points;
* the Colab install cell is on no page, and every chapter page opens with prose;
* on a phone's viewport (390 px) no chapter page scrolls sideways and every paragraph fits the screen.

Screenshots of every page go to ``test-artifacts/site/`` (kept by CI as artifacts). Chromium and
chromedriver come from the OS (``apt-get install chromium chromium-driver``, as ``.ci/run`` does);
without them the test is skipped locally and fails under ``GPTCOURSE_REQUIRE_DATA=1`` (CI).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urldefrag

import nbformat
import pytest
import yaml
from selenium.webdriver.support.wait import WebDriverWait

from gptcourse import labs

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "test-artifacts" / "site"
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *[\d.]+[kMG]?/")


def toc_files() -> list[str]:
    """Every page of the book, as paths without extension (``book/intro``, ``chapters/01_...``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def _source(page: str) -> Path | None:
    for ext in (".ipynb", ".md"):
        if (ROOT / (page + ext)).is_file():
            return ROOT / (page + ext)
    return None


def _unavailable(message: str) -> None:
    if os.environ.get("GPTCOURSE_REQUIRE_DATA") == "1":
        pytest.fail(message + "; GPTCOURSE_REQUIRE_DATA=1 (CI) forbids skipping", pytrace=False)
    pytest.skip(message)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a browser that moved on mid-download
            super().handle_error(request, client_address)


def _handler(directory: Path, missing: list[str]):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def send_error(self, code, message=None, explain=None):
            missing.append(f"{code} {unquote(self.path)}")
            super().send_error(code, message, explain)

        def log_message(self, *args):  # quiet
            pass

    return Handler


@pytest.fixture(scope="session")
def html_dir() -> Path:
    """The built site: ``_build/html``, built now with ``make book``'s command, or the folder that
    ``$GPTCOURSE_BUILT_SITE`` names (a site built elsewhere, checked as it is)."""
    if os.environ.get("GPTCOURSE_BUILT_SITE"):
        return Path(os.environ["GPTCOURSE_BUILT_SITE"])
    jb = Path(sys.executable).parent / "jupyter-book"
    if not jb.exists():
        _unavailable("jupyter-book is not installed (pip install -e '.[test]')")
    build = subprocess.run(
        [str(jb), "build", "-W", "-n", "--keep-going", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert build.returncode == 0, f"the book build failed (make book):\n{build.stdout[-6000:]}\n{build.stderr[-3000:]}"
    return HTML


@pytest.fixture(scope="session")
def site(html_dir):
    """``(base URL, list of 404s the server saw)`` for the built book, served on localhost."""
    missing: list[str] = []
    server = _Server(("127.0.0.1", 0), _handler(html_dir, missing))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", missing
    server.shutdown()


@pytest.fixture(scope="session")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _unavailable("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for name, value in attrs if name in ("id", "name") and value)


@functools.cache
def _fetch(url: str) -> tuple[int, frozenset[str]]:
    """HTTP status of a same-site URL and, for HTML, the ids its elements carry."""
    try:
        with urllib.request.urlopen(url) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        return err.code, frozenset()
    ids = _Ids()
    if url.endswith((".html", "/")):
        ids.feed(body.decode("utf-8", "replace"))
    return status, frozenset(ids.ids)


PAGES = ["index"] + toc_files()


@pytest.mark.parametrize("page", PAGES)
def test_page_in_a_real_browser(page, site, browser, html_dir):
    base, missing = site
    url = base + page + ".html"
    missing.clear()
    browser.get_log("browser")  # drop anything left from the previous page
    browser.get(url)
    WebDriverWait(browser, 30).until(  # the index redirects to the first page: wait for where it lands
        lambda b: b.execute_script("return document.readyState") == "complete" and b.current_url.startswith(base)
    )
    assert (html_dir / (page + ".html")).is_file(), f"{page}.html was not built"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / (page.replace("/", "__") + ".png")
    browser.save_screenshot(str(shot))

    problems = []
    for entry in browser.get_log("browser"):
        if entry["level"] == "SEVERE" and base in entry["message"] and "/favicon.ico" not in entry["message"]:
            problems.append(f"browser error: {entry['message']}")
    # /favicon.ico is the browser's own guess, not something the site asks for
    problems += [f"missing resource: {m}" for m in missing if not m.endswith(" /favicon.ico")]
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => i.src.startsWith(arguments[0])"
        " && !(i.complete && i.naturalWidth > 0)).map(i => i.src)",
        base,
    )
    problems += [f"broken image: {src}" for src in broken]
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue
        target, fragment = urldefrag(link)
        status, ids = _fetch(target)
        if status != 200:
            problems.append(f"broken link: {link} ({status})")
        elif fragment and target.endswith(".html") and unquote(fragment) not in ids:
            problems.append(f"broken link: {link} (no element with id {fragment!r})")

    source = _source(page)
    if source is not None and source.suffix == ".ipynb":
        nb = nbformat.read(source, as_version=4)
        badge = next((c for c in nb.cells if labs.BADGE_TAG in c.metadata.get("tags", [])), None)
        expected = labs.colab_url(source.relative_to(ROOT).as_posix())
        assert badge is not None and expected in badge.source, f"{page}: its badge does not point at {expected}"
        buttons = browser.execute_script(
            'return Array.from(document.querySelectorAll(\'.header-article a[href*="colab.research.google.com"],'
            ' .dropdown-launch-buttons a[href*="colab.research.google.com"]\')).map(a => a.href)'
        )
        if expected not in buttons:
            problems.append(f"no Colab launch button to {expected} (found {buttons})")
        # reading first: the install cell is off every page, and a chapter opens with its prose
        first, has_install = browser.execute_script(
            "const art = document.querySelector('article.bd-article');"
            "const blocks = Array.from(art.querySelectorAll('p, div.cell'))"
            ".filter(b => b.textContent.trim() && !b.querySelector('img[src*=\"colab-badge\"]'));"
            "return [blocks.length ? blocks[0].tagName : null, art.textContent.includes('pip\", \"install')]"
        )
        if page.startswith("chapters/") and first != "P":
            problems.append(f"the first visible block is {first!r}, not a paragraph of prose")
        if has_install:
            problems.append(
                f"the Colab install cell is shown on the page (it should carry the tag {labs.BOOK_REMOVE_TAG!r})"
            )
    assert not problems, f"{page} (screenshot {shot.relative_to(ROOT)}):\n" + "\n".join(problems)


@pytest.mark.parametrize("page", [p for p in toc_files() if (_source(p) or Path()).suffix == ".ipynb"])
def test_every_widget_has_a_static_figure_beside_it(page):
    """Widgets are static online: a widget's cell, or the code cell next to it, also shows an image."""
    cells = [c for c in nbformat.read(_source(page), as_version=4).cells if c.cell_type == "code"]

    def has_image(cell):
        return any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}) for o in cell.outputs)

    def is_widget(output):  # tqdm progress bars are widgets too, with their bar as plain text
        data = output.get("data", {})
        return WIDGET in data and not PROGRESS_BAR.search(data.get("text/plain", ""))

    for i, cell in enumerate(cells):
        if any(map(is_widget, cell.outputs)):
            near = cells[max(i - 1, 0) : i + 2]
            assert any(map(has_image, near)), f"{page}: the widget in code cell {i} has no figure beside it"


MOBILE = (390, 844)  # a phone's viewport in CSS pixels (iPhone 12-15)
CHAPTERS = [p for p in PAGES if p.startswith("chapters/")]


@pytest.mark.parametrize("page", CHAPTERS)
def test_a_phone_reads_the_prose_without_scrolling_sideways(page, site, browser):
    """On a narrow viewport the page itself never scrolls sideways and every paragraph of prose fits
    the screen (code cells and wide tables may scroll inside their own boxes)."""
    base, _ = site
    size = browser.get_window_size()
    browser.set_window_size(*MOBILE)
    try:
        browser.get(base + page + ".html")
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")
        width, page_width, wide = browser.execute_script(
            "const w = document.documentElement.clientWidth;"
            "const wide = Array.from(document.querySelectorAll('article.bd-article p'))"
            ".filter(p => p.offsetParent !== null && !p.closest('.cell_output, .highlight, table, mjx-container'))"
            ".filter(p => p.getBoundingClientRect().right > w + 1).map(p => p.textContent.slice(0, 60));"
            "return [w, document.documentElement.scrollWidth, wide]"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / ("mobile__" + page.replace("/", "__") + ".png")))
    finally:
        browser.set_window_size(size["width"], size["height"])
    assert page_width <= width + 1, f"{page}: the page is {page_width} px wide on a {width} px screen"
    assert not wide, f"{page}: paragraphs wider than the screen: {wide[:3]}"
