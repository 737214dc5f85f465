"""The pieces every HTML page of analysis shares: one style sheet, inline images, tables, the page's start.

Pages are single files (styles and images inline) so a report can be attached to a
ticket as is; every page looks alike because they all start here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

ABSENT = "—"  # a figure that was not measured (e.g. latencies of a run where nothing completed)

CSS = """
:root { color-scheme: light dark; --ink:#222; --bg:#fff; --muted:#666; --warn:#b35c00; --ok:#2f7d4f; --line:#ddd; }
@media (prefers-color-scheme: dark) { :root { --ink:#e6e6e6; --bg:#16181c; --muted:#9a9a9a; --warn:#f0a050; --ok:#6fcf97; --line:#333; } }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: var(--bg); margin: 2rem auto; max-width: 1200px; padding: 0 1rem; }
h1, h2, h3 { font-weight: 600; } .muted { color: var(--muted); }
li.warning { color: var(--warn); } li.note { color: var(--muted); } li.ok { color: var(--ok); }
table { border-collapse: collapse; font-size: 12px; margin: .5rem 0 1.5rem; display: block; overflow-x: auto; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
th { position: sticky; top: 0; background: var(--bg); }
img { max-width: 100%; display: block; margin: .5rem 0 1.5rem; }
"""


def page_start(title: str) -> str:
    """The head and the title of a page, up to the first section."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"\n<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>")


def image(path: Path) -> str:
    """A PNG inline, named by its file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def table_html(frame: pd.DataFrame) -> str:
    """A table of figures as the reports print them: thousands separated, two decimals, a dash for what is absent."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:,.2f}", na_rep=ABSENT, border=0)


