"""Charts as SVG rendered on the server with pygal: no script runs in the browser (the page's
content security policy allows none), and each chart comes with the table of its figures."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pygal
from markupsafe import Markup
from pygal.style import Style

_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
STYLE = Style(
    background="transparent", plot_background="#ffffff", foreground="#1f2933", foreground_strong="#1f2933",
    foreground_subtle="#52606d", font_family="system-ui, 'Segoe UI', 'Noto Sans', Tahoma, sans-serif",
    label_font_size=13, major_label_font_size=13, legend_font_size=13, value_font_size=12, tooltip_font_size=12,
    colors=("#1d4ed8", "#15803d", "#b45309", "#b91c1c", "#6d28d9", "#0e7490", "#4d7c0f"),
)


def _svg(chart: pygal.graph.graph.Graph) -> Markup:
    """The chart as inline SVG, hidden from screen readers (the table next to it says the same)."""
    svg = chart.render(is_unicode=True)
    svg = _COMMENT.sub("", _SCRIPT.sub("", svg))
    return Markup(svg.replace("<svg ", '<svg aria-hidden="true" focusable="false" ', 1))


def bars(labels: Sequence[str], series: dict[str, Sequence[float | None]], fmt: Callable[[float], str], *,
         stacked: bool = False) -> Markup:
    cls = pygal.StackedBar if stacked else pygal.Bar
    chart = cls(style=STYLE, js=[], disable_xml_declaration=True, width=720, height=320, explicit_size=False,
                legend_at_bottom=True, legend_at_bottom_columns=min(len(series), 5) or 1, value_formatter=fmt,
                show_y_guides=True, print_values=False, truncate_label=-1, x_label_rotation=0 if len(labels) < 7 else 20)
    chart.x_labels = list(labels)
    for name, values in series.items():
        chart.add(name, list(values))
    return _svg(chart)
