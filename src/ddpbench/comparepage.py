"""The comparison page (ddpbench.compare's result): one self-contained HTML file in the report's look
(ddpbench.report's environment and style), every value through jinja2's autoescaping; only the
history plot, SVG that matplotlib wrote, is marked safe."""

from __future__ import annotations

from ddpbench.io import utc_now
from ddpbench.report import environment
from ddpbench.svg import inline_svg

TEMPLATE = "compare.html.j2"


def settings(rows: list[dict]) -> list[dict]:
    """The table's rows grouped by (variant, batch size), in their order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["batch_size"]), []).append(row)
    return [{"variant": v, "batch_size": bs, "rows": g} for (v, bs), g in groups.items()]


def render(result: dict) -> str:
    history = result["history"]
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            result=result,
            settings=settings(result["rows"]),
            generated=utc_now(),
            history_svg=inline_svg(history["plot_svg"], "history") if history else "",
        )
    )
