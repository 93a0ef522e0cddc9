"""Figures as deterministic SVG: the same figure, the same file (no date, fixed ids), and markup
that can sit inside HTML beside other figures."""

from __future__ import annotations

import io
import re

import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure

# Plot text is only numbers, fixed words and variant names, which report.load_summary holds to
# VARIANT_NAME (letters, digits, "_", ".", "-"): no other run or config text goes into a figure,
# so nothing user-controlled can reach the SVG as markup (or be mis-read as matplotlib mathtext).
SVG_STYLE = {
    "svg.fonttype": "none",  # text stays text; the browser's own sans-serif font renders it
    "svg.hashsalt": "ddpbench",  # deterministic clip-path ids: same inputs, same file
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#6b7280",
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "legend.fontsize": 8,
}


def svg_text(fig: Figure) -> str:
    """The figure as a standalone SVG document, without the date or RDF metadata block."""
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return buffer.getvalue()


def inline_svg(svg: str, name: str) -> Markup:
    """SVG markup for inside HTML: no XML prolog, and ids prefixed so two figures' clip paths
    cannot collide. Safe to mark: matplotlib wrote it and escapes every text it draws."""
    body = svg[svg.index("<svg") :]
    body = re.sub(r'\bid="', f'id="{name}-', body)
    body = body.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return Markup(body)
