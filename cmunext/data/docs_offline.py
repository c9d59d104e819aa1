"""Data Docs that render with no network: great-expectations' pages load Bootstrap, jQuery, bootstrap-table,
Font Awesome and Vega from public CDNs, so offline (hospital networks, these build machines) they come out
unstyled with empty tables. This copies the same files, shipped in `docs_assets/` (SOURCES.md), into the site
and points every page at them; the GX logo, an image on a public bucket, is left out."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).with_name("docs_assets")
SITE_FOLDER = "static/offline"
# CDN address (up to the version) -> file in docs_assets/
CDN = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega/vega-embed.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "bootstrap-dark/bootstrap-prefers-dark.min.css",
}
# what a page loads: <script src>, <link href>, <img src>
LOADED = re.compile(r'(<(?:script|link|img)\b[^>]*?\b(?:src|href)=")(https?://[^"]+)(")', re.I)


def external_resources(html: str) -> list[str]:
    """The addresses a page would fetch from the network (links to follow are not counted)."""
    return [m.group(2) for m in LOADED.finditer(html)]


def make_offline(site: str | Path) -> list[str]:
    """Copy the assets into SITE and rewrite its pages to load them; returns what stays external (none)."""
    site = Path(site)
    target = site / SITE_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ASSETS, target, ignore=shutil.ignore_patterns("*.md"))
    left: list[str] = []
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")

        def local(m: re.Match) -> str:
            url = m.group(2)
            if url in CDN:
                rel = os.path.relpath(target / CDN[url], page.parent)
                return f"{m.group(1)}{Path(rel).as_posix()}{m.group(3)}"
            if "great-expectations-web-assets" in url:  # the logo: not worth a network request
                return f'{m.group(1)}data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7" alt="Great Expectations{m.group(3)}'
            left.append(f"{page.relative_to(site)}: {url}")
            return m.group(0)

        page.write_text(LOADED.sub(local, html), encoding="utf-8")
    return left
