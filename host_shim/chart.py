"""`kindling analyze --svg`: the boot timeline as an SVG chart (after `systemd-analyze plot`).

Two panels, each on its own time axis, because the clocks are not comparable:
host events (seconds since create/start, one row each, a bar from 0 to the
event) and guest stages (the guest's CLOCK_MONOTONIC, one bar per stage from
its start to its end).  A dashed line marks time-to-Running on the host axis.
"""

import math
from xml.sax.saxutils import escape

from .timeline import Timeline, _host_sort_key

WIDTH = 960
LABEL_WIDTH = 220
ROW = 22
PAD = 16
AXIS = 24
TITLE = 34

STYLE = """
text { font-family: sans-serif; font-size: 12px; fill: #222; }
.title { font-size: 15px; font-weight: bold; }
.panel { font-size: 13px; font-weight: bold; }
.grid { stroke: #ddd; stroke-width: 1; }
.host { fill: #9ecae1; }
.guest { fill: #fdae6b; }
.running { stroke: #31a354; stroke-width: 2; stroke-dasharray: 5,3; }
"""


def nice_step(span: float, ticks: int = 8) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    base = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if base * mult >= raw:
            return base * mult
    return base * 10


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


class _Panel:
    def __init__(self, out: list[str], top: float, t0: float, t1: float, title: str):
        self.out, self.top, self.t0 = out, top, t0
        self.span = max(t1 - t0, 1e-3)
        self.plot = WIDTH - LABEL_WIDTH - 2 * PAD
        out.append(f'<text class="panel" x="{PAD}" y="{top + 14}">{escape(title)}</text>')
        self.axis_y = top + 20 + AXIS
        self.grid = len(out)       # grid lines end at the panel's bottom, known at finish()
        step = nice_step(self.span)
        tick = math.ceil(t0 / step) * step
        while tick <= t0 + self.span + 1e-9:
            x = self.x(tick)
            out.append(f'<line class="grid" x1="{x:.1f}" y1="{self.axis_y - 4}" x2="{x:.1f}" '
                       f'y2="{{bottom}}"/>')
            out.append(f'<text x="{x:.1f}" y="{self.axis_y - 8}" text-anchor="middle">'
                       f'{_fmt(tick)}</text>')
            tick += step
        self.grid_end = len(out)
        self.rows = 0

    def x(self, t: float) -> float:
        return PAD + LABEL_WIDTH + (t - self.t0) / self.span * self.plot

    def row_y(self) -> float:
        return self.axis_y + 4 + self.rows * ROW

    def bar(self, label: str, start: float, end: float, css: str, note: str) -> None:
        y = self.row_y()
        x0, x1 = self.x(start), self.x(end)
        self.out.append(f'<text x="{PAD}" y="{y + 15}">{escape(label)}</text>')
        self.out.append(f'<rect class="{css}" x="{x0:.1f}" y="{y + 3}" '
                        f'width="{max(x1 - x0, 1.5):.1f}" height="{ROW - 6}">'
                        f'<title>{escape(label)}: {escape(note)}</title></rect>')
        self.out.append(f'<text x="{x1 + 4:.1f}" y="{y + 15}">{escape(note)}</text>')
        self.rows += 1

    def finish(self) -> float:
        """Close the panel; its bottom y."""
        bottom = self.row_y() + 4
        for i in range(self.grid, self.grid_end):
            self.out[i] = self.out[i].replace("{bottom}", f"{bottom:.1f}")
        return bottom


def render_svg(timeline: Timeline, *, title: str, time_to_running: float | None) -> str:
    """The chart as an SVG document (a str)."""
    out: list[str] = []
    top = TITLE
    host = sorted(timeline.host, key=_host_sort_key)
    if host:
        end = max([e.at for e in host] + [time_to_running or 0])
        panel = _Panel(out, top, 0.0, end * 1.15 or 1.0, "host events (s since create/start)")
        for e in host:
            panel.bar(e.name, 0.0, e.at, "host", f"{e.at:.3f} s")
        bottom = panel.finish()
        if time_to_running is not None:
            x = panel.x(time_to_running)
            out.append(f'<line class="running" x1="{x:.1f}" y1="{panel.axis_y - 4}" x2="{x:.1f}" '
                       f'y2="{bottom:.1f}"><title>time to Running: {time_to_running:.3f} s'
                       f'</title></line>')
        top = bottom + PAD
    stages = sorted(timeline.stages, key=lambda s: (s.start, s.end))
    if stages:
        t0 = min(s.start for s in stages)
        t1 = max(s.end for s in stages)
        panel = _Panel(out, top, min(t0, 0.0), t1 + (t1 - min(t0, 0.0)) * 0.15,
                       "boot stages (guest clock, s)")
        for s in stages:
            panel.bar(s.name, s.start, s.end, "guest", f"{s.duration:.3f} s")
        top = panel.finish() + PAD
    if not host and not stages:
        out.append(f'<text x="{PAD}" y="{top + 14}">no timeline recorded</text>')
        top += ROW + PAD
    height = math.ceil(top)
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}">',
        f"<style>{STYLE}</style>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fff"/>',
        f'<text class="title" x="{PAD}" y="22">{escape(title)}</text>',
    ]
    return "\n".join(head + out + ["</svg>"]) + "\n"


def render_instance(info) -> str:
    """The chart of an InstanceInfo's boot (`kindling analyze --svg`, kindling serve)."""
    return render_svg(info.timeline, title=f"kindling boot of {info.name} ({info.id}), boot "
                                           f"{info.boot}", time_to_running=info.time_to_running)
