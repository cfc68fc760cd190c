"""Loss curves for people: a small SVG beside the adapter and a text sparkline at the end of `kubetune run`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kubetune_api.metrics import Curves

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as a line of block characters, resampled to at most `width` (lower is lower)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        finite = [finite[int(i * len(finite) / width)] for i in range(width)]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - low) / span * len(BARS)))] for v in finite)


def svg(curves: Curves, width: int = 480, height: int = 240) -> str:
    """Training loss (per logged step) and held-out loss (per evaluation) against the step, on one pair of axes."""
    points = [(p.step, p.loss) for p in curves.train if p.loss is not None]
    held = [(p.step, p.evalLoss) for p in curves.eval if p.evalLoss is not None]
    everything = points + held
    if not everything:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"/>\n'
    pad = 40
    x_low, x_high = min(s for s, _ in everything), max(s for s, _ in everything)
    y_low, y_high = min(v for _, v in everything), max(v for _, v in everything)

    def xy(step: float, value: float) -> str:
        x = pad + (step - x_low) / ((x_high - x_low) or 1) * (width - 2 * pad)
        y = height - pad - (value - y_low) / ((y_high - y_low) or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    def line(series: Sequence[tuple[float, float]], colour: str) -> str:
        if not series:
            return ""
        marks = "".join(
            f'<circle cx="{xy(*p).split(",")[0]}" cy="{xy(*p).split(",")[1]}" r="2.5" fill="{colour}"/>' for p in series
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(xy(*p) for p in series)}"/>{marks}'

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">'
        f'<rect width="{width}" height="{height}" fill="white"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
        f'<text x="{pad}" y="{height - pad + 15}">step {x_low:g}</text>'
        f'<text x="{width - pad}" y="{height - pad + 15}" text-anchor="end">{x_high:g}</text>'
        f'<text x="{pad - 4}" y="{pad}" text-anchor="end">{y_high:.3g}</text>'
        f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">{y_low:.3g}</text>'
        f"{line(points, '#1f77b4')}{line(held, '#d62728')}"
        f'<text x="{width - pad}" y="{pad - 20}" text-anchor="end" fill="#1f77b4">training loss</text>'
        f'<text x="{width - pad}" y="{pad - 6}" text-anchor="end" fill="#d62728">held-out loss</text>'
        "</svg>\n"
    )
