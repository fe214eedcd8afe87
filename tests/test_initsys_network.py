"""initsys/network.py's netlink work for real, in a fresh network and UTS namespace of
the host (`unshare -n -u`) with a veth `eth0`: the prestarted helper's path (`--go-fd`:
lo brought up before the settings come, then eth0's address, MTU, route and hostname)."""

import json
import subprocess
import sys

from tests.vm import ROOT

SCRIPT = r"""
import json, os, socket, sys
from initsys import network
IPRoute = network.import_iproute()
with IPRoute() as ipr:
    ipr.link("add", ifname="eth0", kind="veth", peer="peer0")   # no dummy module on every host
    (lo,) = ipr.link_lookup(ifname="lo")
    lo_before = ipr.get_links(lo)[0].get_attr("IFLA_OPERSTATE")
r, w = os.pipe()
os.write(w, sys.argv[1].encode())
os.close(w)
code = network.main(["--go-fd", str(r)])
with IPRoute() as ipr:
    (lo,) = ipr.link_lookup(ifname="lo")
    (eth0,) = ipr.link_lookup(ifname="eth0")
    link = ipr.get_links(eth0)[0]
    print(json.dumps({
        "code": code, "lo_before": lo_before,
        "lo_up": bool(ipr.get_links(lo)[0]["flags"] & 1),
        "eth0_up": bool(link["flags"] & 1), "mtu": link.get_attr("IFLA_MTU"),
        "addrs": [a.get_attr("IFA_ADDRESS") + "/" + str(a["prefixlen"]) for a in ipr.get_addr(index=eth0)],
        "gateways": [r.get_attr("RTA_GATEWAY") for r in ipr.get_default_routes()],
        "hostname": socket.gethostname()}))
"""


def configure_in_namespace(settings):
    out = subprocess.run(["unshare", "-n", "-u", sys.executable, "-c", SCRIPT, json.dumps(settings)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    said, result = out.stdout.split("\n", 1)     # the helper's own line comes first
    return dict(json.loads(result), said=said)


def test_the_prestarted_helper_configures_lo_and_eth0():
    got = configure_in_namespace({"guest_ip": "10.9.0.2", "guest_cidr": 24, "guest_gw": "10.9.0.1",
                                  "mtu": 1400, "hostname": "clone-1"})
    assert got["lo_before"] == "DOWN"     # a fresh namespace: the helper brought it up
    assert got == {"code": 0, "lo_before": "DOWN", "lo_up": True, "eth0_up": True, "mtu": 1400,
                   "addrs": ["10.9.0.2/24"], "gateways": ["10.9.0.1"], "hostname": "clone-1",
                   "said": "done"}     # helpers.DONE, once configured: PID 1 goes on then
