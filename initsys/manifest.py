"""What the guest imports: image_build traces these to pick the stdlib the initrd needs.
An entry `module:function` imports the module and calls the function (imports done lazily)."""

GUEST_MODULES = [
    "initsys.main",
    "initsys.boot",
    "initsys.network_helper",
    "initsys.config",
    "initsys.devices",
    "initsys.program",
    "initsys.reaper",
    "initsys.stages",
    "initsys.helpers",
    "initsys.network",
    "initsys.volumes",
    "initsys.agent_gate",
    "initsys.agent_boot",
    "initsys.ports",
    "initsys.powerbutton",
    "agent.main",
    "initsys.rootfs",
    "initsys.systemd_mode",
    "systemd_units",
    "initsys.headers_launch",
    "initsys.headers",
    "tarfile",       # the headers worker's imports (lazy in its code, so named here);
    "zlib",          # tarfile's gz stream (shutil, which tarfile imports, brings lzma too)
    "shutil",
    "json",
    "trio",
    "pyudev",
    "initsys.network:import_iproute",  # `module:function`: the trace calls it too -- pyroute2.iproute.linux
                                       # under a stub parent, as the network helper imports it (without
                                       # pyroute2/__init__'s ndb, sqlite3 and libsqlite3)
    "msgpack",
    "agent.main",   # the in-VM agent: importing it loads all it will ever need (tests/test_agent_main.py)
    "agent.grpc_front",  # its gRPC front end: imported after readiness (agent/front_ends.py), h2 with it
]
