"""`--net`: a private network namespace per instance, with the guest's tap in it.

QEMU is started inside the namespace (`ip netns exec NS qemu ...`) with a tap
device whose host end holds the gateway address.  The guest gets the other
address of a small subnet.  Every namespace has its own stack, so all
instances can use the same addresses without clashing, and nothing of the
guest's network touches the host's interfaces.  Reach the guest from the host
with `ip netns exec kindling-<id> CMD` (e.g. `wget -qO- http://10.200.0.2/`).
"""

import os
from dataclasses import dataclass

from . import run

GATEWAY = "10.200.0.1"
GUEST = "10.200.0.2"
PREFIX = 24
TAP = "tap0"


@dataclass(frozen=True)
class Network:
    namespace: str
    tap: str = TAP
    gateway: str = GATEWAY
    guest_ip: str = GUEST
    prefix: int = PREFIX

    def config_fields(self) -> dict:
        """The config.json fields of PROTOCOL.md §2 for this network."""
        return {"network_enabled": True, "guest_ip": self.guest_ip, "guest_cidr": self.prefix,
                "guest_gw": self.gateway, "guest_dns": self.gateway}

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def netdev_args(self, net_device: str) -> list[str]:
        return ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                "-device", f"{net_device},netdev=net0"]


def _ip(argv: list[str], check: bool = True) -> None:
    run.run(argv, timeout=10, stdout=run.PIPE, stderr=run.PIPE, check=check)


def namespace_for(instance_id: str) -> str:
    return f"kindling-{instance_id}"[:32]


def create(instance_id: str) -> Network:
    """Create the namespace, its tap and the gateway address; undone by destroy()."""
    net = Network(namespace_for(instance_id))
    ns = ["ip", "-n", net.namespace]
    _ip(["ip", "netns", "add", net.namespace])
    try:
        _ip([*ns, "tuntap", "add", "mode", "tap", "name", net.tap])
        _ip([*ns, "addr", "add", f"{net.gateway}/{net.prefix}", "dev", net.tap])
        _ip([*ns, "link", "set", net.tap, "up"])
        _ip([*ns, "link", "set", "lo", "up"])
    except BaseException:
        destroy(net.namespace)
        raise
    return net


def ensure(instance_id: str) -> None:
    """The instance's namespace and tap, made again if they are gone (e.g. /run was
    cleared by a host reboot while the instance was in standby)."""
    if not os.path.exists(f"/run/netns/{namespace_for(instance_id)}"):
        create(instance_id)


def destroy(namespace: str) -> None:
    """Delete the namespace (and the tap in it); a missing one is fine."""
    _ip(["ip", "netns", "del", namespace], check=False)


def destroy_if_present(instance_id: str) -> None:
    """Delete the instance's namespace if it has one (`ip netns` keeps them in /run/netns)."""
    name = namespace_for(instance_id)
    if os.path.exists(f"/run/netns/{name}"):
        destroy(name)
