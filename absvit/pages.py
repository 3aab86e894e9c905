"""Markdown results as standalone HTML pages (``X.md`` -> ``X.html`` beside it).

Snakemake's report shows an HTML, image or PDF result inline and offers any other file (CSV, Markdown) only as a
download, so the tables, the cost table and the reproduction report go into it as these pages. Markdown is parsed by
markdown-it-py (CommonMark plus GitHub tables); raw HTML in the source is escaped, not passed through.
"""
from __future__ import annotations

import html
from pathlib import Path

from markdown_it import MarkdownIt

from absvit.errors import UsageError
from absvit.io import write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1e293b; background: #fff; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #cbd5e1; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f1f5f9; }
code { background: #f1f5f9; padding: 0 0.2em; }
"""


def html_page(markdown: str, title: str) -> str:
    """One self-contained page (inline style, no external resource) of a Markdown text."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_pages(markdown_files) -> list[Path]:
    """``X.html`` beside each ``X.md`` (written atomically); returns the pages."""
    pages = []
    for path in map(Path, markdown_files):
        if path.suffix != ".md" or not path.is_file():
            raise UsageError(f"{path}: expected an existing Markdown file (.md)")
        page = path.with_suffix(".html")
        write_text(page, html_page(path.read_text(encoding="utf-8"), title=f"absvit-bench: {path.stem}"))
        pages.append(page)
    return pages
