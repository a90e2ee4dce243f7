"""The built HTML documentation works offline and reads in order.

These tests read the site that ``sphinx-build -b html docs docs/_build/html`` wrote
(another directory with ``ELBO_CHECK_DOCS_HTML``). CI's frameworks job builds it and
then runs them; when no site is built they are skipped, unless
``ELBO_CHECK_DOCS_REQUIRED=1`` (set by CI) makes a missing site a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ELBO_CHECK_DOCS_HTML", ROOT / "docs" / "_build" / "html"))

#: Attributes through which a page makes the browser fetch something.
FETCHING = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "embed": ("src",),
    "object": ("data",),
}
#: ``<link rel=...>`` kinds that only name a page (navigation), fetching nothing.
NAVIGATION_RELS = {"index", "search", "next", "prev", "top", "up", "canonical", "author"}
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)""")
#: The longest code line the page layout shows without wrapping at 1280 px.
MAX_CODE_LINE = 100


def _site() -> Path:
    if not (SITE / "index.html").is_file():
        if os.environ.get("ELBO_CHECK_DOCS_REQUIRED", "") not in ("", "0"):
            pytest.fail(f"no built documentation at {SITE} (ELBO_CHECK_DOCS_REQUIRED is set)")
        pytest.skip(f"no built documentation at {SITE}")
    return SITE


def _pages() -> Iterator[Path]:
    site = _site()
    for page in sorted(site.rglob("*.html")):
        if "_static" not in page.relative_to(site).parts:
            yield page


class _Page(HTMLParser):
    """The fetched addresses, the classes, and the code text of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[tuple[str, str]] = []
        self.classes: set[str] = set()
        self.inline_styles: list[str] = []
        self.code_lines: list[str] = []
        self._pre_depth = 0
        self._pre_text: list[str] = []
        self._in_style = False
        self.related_bottom = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.classes.update(values.get("class", "").split())
        if tag == "div" and {"related", "bottom"} <= set(values.get("class", "").split()):
            self.related_bottom = True
        if values.get("style"):
            self.inline_styles.append(values["style"])
        rel = set(values.get("rel", "").lower().split())
        if not (tag == "link" and rel and rel <= NAVIGATION_RELS):
            for attribute in FETCHING.get(tag, ()):
                if values.get(attribute):
                    self.fetched.append((tag, values[attribute]))
        if tag == "pre":
            self._pre_depth += 1
            self._pre_text = []
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            self.code_lines.extend("".join(self._pre_text).split("\n"))
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._pre_depth:
            self._pre_text.append(data)
        if self._in_style:
            self.inline_styles.append(data)


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_the_site_has_the_documentation_pages() -> None:
    names = {page.relative_to(_site()).as_posix() for page in _pages()}
    for expected in ("index.html", "concepts.html", "api.html", "tutorials/pytest-vae.html"):
        assert expected in names


def test_no_page_fetches_anything_from_another_host() -> None:
    """Scripts, stylesheets, images and fonts all come from the built site itself."""
    outside = []
    for page in _pages():
        parsed = _parse(page)
        addresses = [address for _, address in parsed.fetched]
        for style in parsed.inline_styles:
            addresses += CSS_URL.findall(style)
        outside += [f"{page.name}: {a}" for a in addresses if EXTERNAL.match(a)]
    for sheet in (_site() / "_static").rglob("*.css"):
        found = CSS_URL.findall(sheet.read_text(encoding="utf-8", errors="replace"))
        outside += [f"{sheet.name}: {a}" for a in found if EXTERNAL.match(a)]
    assert not outside, outside


def test_every_local_script_and_stylesheet_a_page_loads_exists() -> None:
    missing = []
    for page in _pages():
        for tag, address in _parse(page).fetched:
            if tag not in ("script", "link") or EXTERNAL.match(address):
                continue
            target = (page.parent / address.split("?", 1)[0].split("#", 1)[0]).resolve()
            if not target.is_file():
                missing.append(f"{page.name}: {address}")
    assert not missing, missing


def test_pages_with_math_load_the_bundled_mathjax() -> None:
    """Every page with a formula loads MathJax from the site, and its fonts are there."""
    site = _site()
    with_math = 0
    for page in _pages():
        parsed = _parse(page)
        if "math" not in parsed.classes:
            continue
        with_math += 1
        scripts = [address for tag, address in parsed.fetched if tag == "script"]
        mathjax = [address for address in scripts if "mathjax" in address.lower()]
        assert mathjax, f"{page.name} has math but loads no MathJax"
        for address in mathjax:
            assert not EXTERNAL.match(address), (page.name, address)
            assert (page.parent / address.split("?", 1)[0]).resolve().is_file(), address
    assert with_math >= 5, "the concepts page and the tutorials have formulas"
    fonts = site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("*.woff")), f"MathJax's fonts are not in {fonts}"


def test_code_lines_fit_the_page() -> None:
    """Python input lines fit without wrapping; long output lines are allowed to wrap."""
    too_long = []
    for page in _pages():
        if page.name in ("genindex.html", "py-modindex.html", "search.html"):
            continue
        for line in _parse(page).code_lines:
            is_input = line.startswith((">>> ", "... ")) and line != "..."
            if is_input and len(line) > MAX_CODE_LINE:
                too_long.append(f"{page.name} ({len(line)}): {line[:60]}")
    assert not too_long, too_long


def test_every_page_in_the_reading_order_links_to_the_previous_and_next() -> None:
    site = _site()
    for name in ("concepts.html", "tutorials/oracle.html", "tutorials/pytest-vae.html"):
        parsed = _parse(site / name)
        assert parsed.related_bottom, f"{name} has no previous/next links under the page"
