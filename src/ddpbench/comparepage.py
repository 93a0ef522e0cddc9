"""The comparison page (ddpbench.compare's result): one self-contained HTML file in the report's look
(ddpbench.report's environment and style), every value through jinja2's autoescaping; only the
history plot, SVG that matplotlib wrote, is marked safe."""

from __future__ import annotations

from ddpbench.io import utc_now
from ddpbench.report import environment, study_tables
from ddpbench.svg import inline_svg

TEMPLATE = "compare.html.j2"


def render(result: dict) -> str:
    history = result["history"]
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            result=result,
            settings=study_tables(result["rows"]),
            generated=utc_now(),
            history_svg=inline_svg(history["plot_svg"], "history") if history else "",
        )
    )
