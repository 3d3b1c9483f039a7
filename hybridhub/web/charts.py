"""Charts drawn by Vega-Lite in the browser, each with a data table that works without it.

The libraries (vega, vega-lite, vega-embed) are vendored from npm into ``hybridhub/web/static``
and served by the portal itself (no CDN); ``hybridhub/web/static/charts.js`` renders every
``.vega-chart`` element's spec.  Every chart carries its numbers as an HTML table under
it, for screen readers and browsers without JavaScript.  Labels are escaped; the markup is
:class:`markupsafe.Markup`, placed in autoescaped templates as is.
"""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup, escape

#: Colour-blind safe palette (Okabe-Ito), cycled over the series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
#: d3-format of axis labels and tooltips: thousands separators, up to 4 significant digits.
NUMBER_FORMAT = ",.4~g"


def _fmt(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e15 else f"{value:.3e}"


def stacked_bars_spec(series: dict[str, dict[str, float]], *, title: str, unit: str,
                      legend: str = "series") -> dict[str, Any]:
    """The Vega-Lite spec of a stacked bar chart: one bar per period, a segment per series."""
    values = [{"period": p, "series": name or "-", "value": v}
              for name, points in sorted(series.items()) for p, v in sorted(points.items())]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": "container",
        "height": 220,
        "data": {"values": values},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {"field": "period", "type": "ordinal", "title": "period",
                  "axis": {"labelAngle": -40, "labelOverlap": True}},
            "y": {"field": "value", "type": "quantitative", "title": unit,
                  "stack": True, "axis": {"format": NUMBER_FORMAT, "labelLimit": 120}},
            "color": {"field": "series", "type": "nominal", "title": legend,
                      "scale": {"range": list(PALETTE)}},
            "tooltip": [
                {"field": "period", "type": "ordinal"},
                {"field": "series", "type": "nominal", "title": legend},
                {"field": "value", "type": "quantitative", "title": unit,
                 "format": NUMBER_FORMAT},
            ],
        },
    }


def stacked_bars(
    series: dict[str, dict[str, float]],
    *,
    title: str,
    unit: str = "",
    legend: str = "series",
) -> Markup:
    """A stacked bar chart (Vega-Lite) with its data table underneath.

    ``series`` maps a series name (class, model or user) to ``{period: value}``.
    """
    periods = sorted({p for values in series.values() for p in values})
    names = sorted(series)
    if not periods:
        return Markup('<p class="chart-empty">No usage in this selection.</p>')
    spec = stacked_bars_spec(series, title=title, unit=unit, legend=legend)
    head = "".join(f'<th scope="col" class="num">{escape(n or "-")}</th>' for n in names)
    body = "".join(
        f'<tr><th scope="row">{escape(p)}</th>'
        + "".join(f'<td class="num">{_fmt(series[n].get(p, 0.0))}</td>' for n in names)
        + f'<td class="num">{_fmt(sum(series[n].get(p, 0.0) for n in names))}</td></tr>'
        for p in periods
    )
    return Markup(
        f'<figure class="chart-figure"><div class="vega-chart" role="img" '
        f'aria-label="{escape(title)}" data-spec="{escape(json.dumps(spec))}"></div>'
        f'<details class="chart-data" open><summary>{escape(title)}: data ({escape(unit)})</summary>'
        f'<table class="table table-sm chart-table"><caption>{escape(title)}, {escape(unit)}'
        f'</caption><thead><tr><th scope="col">period</th>{head}'
        f'<th scope="col" class="num">total</th></tr></thead><tbody>{body}</tbody></table>'
        "</details></figure>"
    )
