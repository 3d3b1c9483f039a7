"""Server-rendered SVG charts (no JavaScript, no CDN): stacked bars of amounts over time.

Every label is escaped; the markup is returned as :class:`markupsafe.Markup` so it can be
placed in an autoescaped template as is.
"""

from __future__ import annotations

from markupsafe import Markup, escape

#: Colour-blind friendly palette (Okabe-Ito), cycled over the series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")


def stacked_bars(
    series: dict[str, dict[str, float]],
    *,
    title: str,
    unit: str = "",
    width: int = 720,
    height: int = 260,
) -> Markup:
    """A stacked bar chart: one bar per period, one coloured segment per series.

    ``series`` maps a series name (class, model or user) to ``{period: amount}``.
    """
    periods = sorted({p for values in series.values() for p in values})
    names = sorted(series)
    if not periods:
        return Markup('<p class="chart-empty">No usage in this selection.</p>')
    totals = [sum(series[n].get(p, 0.0) for n in names) for p in periods]
    top = max(totals) or 1.0
    left, bottom, legend_w = 60, 40, 170
    plot_w, plot_h = width - left - legend_w - 10, height - bottom - 30
    slot = plot_w / len(periods)
    bar_w = max(2.0, slot * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{30 + plot_h}" x2="{left + plot_w}" y2="{30 + plot_h}" '
        'stroke="#555"/>',
        f'<text x="{left - 6}" y="34" font-size="11" text-anchor="end">{top:,.4g}</text>',
        f'<text x="{left - 6}" y="{30 + plot_h}" font-size="11" text-anchor="end">0</text>',
        f'<text x="8" y="{30 + plot_h / 2}" font-size="11" '
        f'transform="rotate(-90 8 {30 + plot_h / 2})">{escape(unit)}</text>',
    ]
    label_every = max(1, len(periods) // 8)
    for i, period in enumerate(periods):
        x = left + i * slot + (slot - bar_w) / 2
        y = 30 + plot_h
        for j, name in enumerate(names):
            value = series[name].get(period, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}" data-series="{escape(name)}" '
                f'data-period="{escape(period)}"><title>{escape(name)} {escape(period)}: '
                f"{value:,.4g}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{30 + plot_h + 16}" font-size="10" '
                f'text-anchor="middle">{escape(period)}</text>'
            )
    for j, name in enumerate(names[:12]):
        ly = 34 + j * 18
        lx = width - legend_w
        parts.append(
            f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" '
            f'fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{lx + 18}" y="{ly}" font-size="11">{escape(name or "-")}</text>'
        )
    if len(names) > 12:
        parts.append(
            f'<text x="{width - legend_w}" y="{34 + 12 * 18}" font-size="11">'
            f"and {len(names) - 12} more</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
