"""hypeman's agent protocol (package `guest`, service `GuestService`): the wire contract.

Message and field names and numbers follow hypeman's public protocol
definition (lib/guest/guest.proto in hypeman's repository); this is our own
statement of them as agent/protowire.py schemas.  Only the messages of the
operations Kindling serves are here: Exec, CopyToGuest, CopyFromGuest,
StatPath; the service's other methods (Shutdown, ReconfigureNetwork,
RebindIdentity) are answered UNIMPLEMENTED by agent/grpc_front.py.
"""

SERVICE = "guest.GuestService"

WINDOW_SIZE = {1: ("rows", "uint32"), 2: ("cols", "uint32")}

EXEC_START = {
    1: ("command", "repeated_string"),
    2: ("tty", "bool"),
    3: ("env", "map_string"),
    4: ("cwd", "string"),
    5: ("timeout_seconds", "int32"),
    6: ("rows", "uint32"),
    7: ("cols", "uint32"),
    8: ("session", "enum"),     # ExecSession: 0 SYSTEM, 1 DESKTOP
}
EXEC_REQUEST = {1: ("start", EXEC_START), 2: ("stdin", "bytes"), 3: ("resize", WINDOW_SIZE),
                "oneof": {"start", "stdin", "resize"}}
EXEC_RESPONSE = {1: ("stdout", "bytes"), 2: ("stderr", "bytes"), 3: ("exit_code", "int32"),
                 "oneof": {"stdout", "stderr", "exit_code"}}

COPY_TO_GUEST_START = {
    1: ("path", "string"),
    2: ("mode", "uint32"),
    3: ("is_dir", "bool"),
    4: ("size", "int64"),
    5: ("mtime", "int64"),      # Unix seconds
    6: ("uid", "uint32"),       # 0: the default owner
    7: ("gid", "uint32"),
}
COPY_TO_GUEST_REQUEST = {1: ("start", COPY_TO_GUEST_START), 2: ("data", "bytes"), 3: ("end", {}),
                         "oneof": {"start", "data", "end"}}
COPY_TO_GUEST_RESPONSE = {1: ("success", "bool"), 2: ("error", "string"), 3: ("bytes_written", "int64")}

COPY_FROM_GUEST_REQUEST = {1: ("path", "string"), 2: ("follow_links", "bool")}
COPY_FROM_GUEST_HEADER = {
    1: ("path", "string"),      # relative to the copy's root
    2: ("mode", "uint32"),
    3: ("is_dir", "bool"),
    4: ("is_symlink", "bool"),
    5: ("link_target", "string"),
    6: ("size", "int64"),
    7: ("mtime", "int64"),
    8: ("uid", "uint32"),
    9: ("gid", "uint32"),
}
COPY_FROM_GUEST_END = {1: ("final", "bool")}
COPY_FROM_GUEST_ERROR = {1: ("message", "string"), 2: ("path", "string")}
COPY_FROM_GUEST_RESPONSE = {1: ("header", COPY_FROM_GUEST_HEADER), 2: ("data", "bytes"),
                            3: ("end", COPY_FROM_GUEST_END), 4: ("error", COPY_FROM_GUEST_ERROR),
                            "oneof": {"header", "data", "end", "error"}}

STAT_PATH_REQUEST = {1: ("path", "string"), 2: ("follow_links", "bool")}
STAT_PATH_RESPONSE = {
    1: ("exists", "bool"),
    2: ("is_dir", "bool"),
    3: ("is_file", "bool"),
    4: ("is_symlink", "bool"),
    5: ("link_target", "string"),
    6: ("mode", "uint32"),
    7: ("size", "int64"),
    8: ("error", "string"),
}

# method -> (request schema, response schema, client streams, server streams)
METHODS = {
    "Exec": (EXEC_REQUEST, EXEC_RESPONSE, True, True),
    "CopyToGuest": (COPY_TO_GUEST_REQUEST, COPY_TO_GUEST_RESPONSE, True, False),
    "CopyFromGuest": (COPY_FROM_GUEST_REQUEST, COPY_FROM_GUEST_RESPONSE, False, True),
    "StatPath": (STAT_PATH_REQUEST, STAT_PATH_RESPONSE, False, False),
}
