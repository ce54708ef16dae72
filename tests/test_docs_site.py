"""The documentation site builds with ``mkdocs build --strict``, and its reference page,
generated from the code by mkdocstrings, documents every public name of the API."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).parent / "mkdocs"

# The public names of shared/spec/api.md, and the module that documents each.
PUBLIC_NAMES = {
    "install": "posthog_errors",
    "uninstall": "posthog_errors",
    "flush": "posthog_errors",
    "stats": "posthog_errors",
    "capture_exception": "posthog_errors",
    "exception_properties": "posthog_errors",
    "PostHogHandler": "posthog_errors",
    "bind": "posthog_errors",
    "set_distinct_id": "posthog_errors",
    "set_session_id": "posthog_errors",
    "reset": "posthog_errors",
    "get_distinct_id": "posthog_errors",
    "POSTHOG_ID_TAG": "posthog_errors",
    "ASGIMiddleware": "posthog_errors.middleware",
    "WSGIMiddleware": "posthog_errors.middleware",
    "DjangoMiddleware": "posthog_errors.middleware",
    "PostHogIntegration": "posthog_errors.sentry",
    "PostHogProcessor": "posthog_errors.structlog",
    "capture_exceptions": "posthog_errors.testing",
    "add_step": "posthog_errors",
    "sentry_integration": "posthog_errors.sentry",
    "PostHogSink": "posthog_errors.loguru",
    "instrument": "posthog_errors.celery",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert MKDOCS.exists(), f"{MKDOCS} is missing: pip install -e '.[dev]'"
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return site_dir


def test_the_site_builds_strict(site: Path) -> None:
    for page in ("quickstart", "grouping", "troubleshooting", "reference"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_the_reference_documents_every_public_name(site: Path, name: str) -> None:
    html = (site / "reference" / "index.html").read_text(encoding="utf-8")
    anchor = f'id="{PUBLIC_NAMES[name]}.{name}"'
    assert anchor in html, f"{PUBLIC_NAMES[name]}.{name} has no entry in the reference"


def test_the_reference_leaves_private_names_out(site: Path) -> None:
    html = (site / "reference" / "index.html").read_text(encoding="utf-8")
    anchors = re.findall(r'id="(posthog_errors[\w.]*)"', html)
    assert anchors
    private = [anchor for anchor in anchors if re.search(r"\._", anchor)]
    assert private == []


# Names with a leading underscore that are someone else's public API, not ours.
NOT_OURS = {"__add_tracing_headers"}  # posthog-js's option that sends the tracing headers


def test_the_reference_text_names_nothing_private(site: Path) -> None:
    """Not in a heading, a signature (a default such as ``_rate_limit.DEFAULT_BURST``), a
    link or a tooltip: the reader sees only names they may use."""
    html_text = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert "posthog_errors._" not in html_text  # no anchor, link or title into internals
    article = html_text[html_text.index("<article") : html_text.index("</article>")]
    text = html.unescape(re.sub(r"<[^>]+>", "", article))
    private = set(re.findall(r"(?<![\w.])_{1,2}[A-Za-z]\w*", text)) - NOT_OURS
    assert private == set(), f"private names in the reference: {sorted(private)}"
