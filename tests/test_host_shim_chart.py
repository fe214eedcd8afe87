"""host_shim/chart.py: the SVG boot chart, parsed back with xml.etree."""

import xml.etree.ElementTree as ET

import pytest

from host_shim import chart
from host_shim.timeline import HostEvent, Stage, Timeline

SVG = "{http://www.w3.org/2000/svg}"

TIMELINE = Timeline(
    stages=[Stage("kernel", 0.0, 1.2), Stage("imports", 1.8, 3.0), Stage("modules", 1.8, 2.6),
            Stage("program-start", 3.1, 3.2)],
    host=[HostEvent("requested", 0.0), HostEvent("launch", 0.2), HostEvent("Running", 3.9),
          HostEvent("first console byte", 0.9)],
)


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    return root


def test_chart_has_a_bar_per_stage_and_event():
    root = parse(chart.render_svg(TIMELINE, title="boot of <web> & co", time_to_running=3.9))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "boot of <web> & co"                 # escaped, and read back
    for name in ("kernel", "imports", "modules", "program-start", "requested", "launch",
                 "Running", "first console byte"):
        assert name in texts
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") in ("host", "guest")]
    assert len(bars) == 8
    assert [t.text for t in root.iter(f"{SVG}title")].count("time to Running: 3.900 s") == 1
    assert int(root.get("height")) > 8 * chart.ROW
    # host events sorted by time: the Running bar is the longest host bar
    host = [r for r in bars if r.get("class") == "host"]
    assert max(host, key=lambda r: float(r.get("width"))).find(f"{SVG}title").text \
        .startswith("Running")


def test_empty_timeline_is_still_a_valid_chart():
    root = parse(chart.render_svg(Timeline(), title="nothing", time_to_running=None))
    assert "no timeline recorded" in [t.text for t in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("span, step", [(1.0, 0.2), (3.9, 0.5), (10, 2), (45, 10), (0.05, 0.01),
                                        (0, 1.0)])
def test_nice_step(span, step):
    assert chart.nice_step(span) == pytest.approx(step)
