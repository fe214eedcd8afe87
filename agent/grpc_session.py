"""hypeman's gRPC calls run by the agent's own operations (agent/execs.py, agent/files.py).

Each call becomes one session of the agent's protocol, run by the same
Agent._run_session and the same handler (run_exec, run_put, run_get,
run_stat) as a call of Kindling's own front end; GrpcSession stands in for
agent/mux.py's Session and translates what the handler sends and receives:

    exec   data "out"/"err" -> ExecResponse.stdout/stderr, "exit" -> exit_code;
           ExecRequest.stdin -> channel "in", resize -> the "resize" control,
           the client's half-close -> stdin EOF
    put    CopyToGuestStart -> the tree's root entry, data -> data, end -> EOF;
           "result"/"error" -> CopyToGuestResponse
    get    an entry -> CopyFromGuestHeader (path under the root's basename, as
           hypeman's client expects), data -> data, an End after each entry,
           End(final) at the tree's eof; "error" -> CopyFromGuestError
    stat   "result" -> StatPathResponse; "error" -> its `error` field

No flow-control accounting of its own: HTTP/2's (agent/grpc_front.py) bounds
both directions.
"""

import os

from agent.mux import EOF, Closed, SessionBase

CHUNK = 32 << 10        # payload per streamed message (hypeman's own size)


class GrpcSession(SessionBase):
    """The Session interface the operations use, over one gRPC call (no cork: each
    message is its own gRPC frame)."""

    class _Mux:
        chunk = CHUNK

    mux = _Mux()

    def __init__(self, call, op):
        self.call = call            # agent/grpc_front.py's Call: receive(), send(dict)
        self.op = op
        self.sid = f"grpc:{op}"
        self.on_control = None
        self.default_control = None
        self.closed = False
        self.result = None          # ("result"|"error"|"exit", body)
        self._remaining = None      # bytes left of the file being sent (get)
        self._root_name = ""        # get: headers' paths start with the root's basename
        self._in = []               # items of the inbound channel already translated

    # --- what the operation sends -------------------------------------------------

    async def send(self, typ, body):
        if self.closed:
            raise Closed(f"session {self.sid} closed")
        if typ == "started":
            return
        self.result = (typ, body)
        if typ == "exit" and self.op == "exec":
            if body.get("error"):   # could not start (127/126): say why, as a shell would
                await self.call.send({"stderr": (body["error"] + "\n").encode()})
            await self.call.send({"exit_code": body["code"]})

    async def send_data(self, ch, data):
        if self.closed:
            raise Closed(f"session {self.sid} closed")
        view = memoryview(data)
        key = "stderr" if ch == "err" else "stdout" if self.op == "exec" else "data"
        for i in range(0, len(data), CHUNK):
            await self.call.send({key: bytes(view[i:i + CHUNK])})
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining <= 0:
                await self._end_entry()

    async def send_entry(self, ch, e):
        rel = e["path"]
        path = os.path.join(self._root_name, rel) if rel else self._root_name
        header = {"path": path, "mode": e.get("mode", 0) & 0o777, "is_dir": e["type"] == "dir",
                  "is_symlink": e["type"] == "symlink", "link_target": e.get("target", ""),
                  "size": e.get("size", 0), "mtime": e.get("mtime_ns", 0) // 1_000_000_000,
                  "uid": e.get("uid", 0), "gid": e.get("gid", 0)}
        await self.call.send({"header": header})
        if e["type"] == "file" and e.get("size"):
            self._remaining = e["size"]
        else:
            await self._end_entry()

    async def _end_entry(self):
        self._remaining = None
        await self.call.send({"end": {"final": False}})

    async def send_eof(self, ch):
        if self.op == "get":
            await self.call.send({"end": {"final": True}})

    # --- what the operation receives -------------------------------------------------

    async def receive(self, ch):
        while not self._in:
            msg = await self.call.receive()
            if msg is None:
                return EOF
            self._translate(msg)
        return self._in.pop(0)

    def _translate(self, msg):
        if "stdin" in msg:
            self._in.append(msg["stdin"])
        elif "resize" in msg:
            size = msg["resize"]
            if self.on_control is not None:
                self.on_control("resize", {"rows": size.get("rows", 0), "cols": size.get("cols", 0)})
        elif "data" in msg:
            self._in.append(msg["data"])
        elif "end" in msg:
            self._in.append(EOF)
        elif "start" in msg:
            self._in.append(put_root_entry(msg["start"]))

    def take_queued_control(self):
        return []

    def queue_control(self, typ, body):
        pass        # controls come only as stdin/resize messages, translated above

    def close(self):
        self.closed = True


def put_root_entry(start):
    """CopyToGuestStart -> the root entry of a one-entry tree (agent/files.py)."""
    e = {"path": "", "type": "dir" if start.get("is_dir") else "file", "mode": start.get("mode", 0o644)}
    if not start.get("is_dir"):
        e["size"] = start.get("size", 0)
    if start.get("mtime"):
        e["mtime_ns"] = start["mtime"] * 1_000_000_000
    if start.get("uid") and start.get("gid"):   # hypeman's rule: both set, or neither applies
        e["uid"], e["gid"] = start["uid"], start["gid"]
    return e


def exec_body(start):
    """ExecStart -> the body of the agent's `exec` (agent/execs.py checks it)."""
    body = {"argv": start.get("command", []), "env": start.get("env", {}),
            "tty": start.get("tty", False), "rows": start.get("rows") or 24,
            "cols": start.get("cols") or 80, "stdin": True}
    if start.get("cwd"):
        body["cwd"] = start["cwd"]
    if start.get("timeout_seconds", 0) > 0:
        body["timeout"] = float(start["timeout_seconds"])
    return body
