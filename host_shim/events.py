"""`kindling run --json` and `kindling exec --json`: the program's life as JSON lines.

One object per line on stdout, each with an "event":

    {"event": "state", "id": ..., "name": ..., "state": "Running", "at": 3.21}
    {"event": "output", "stream": "stdout", "data": "hello"}
    {"event": "exit", "code": 0}

`data` is text: run's console lines (without their newline), exec's chunks as they come
(UTF-8, undecodable bytes replaced).  Errors of Kindling itself still go to stderr as
`kindling: error: ...` and exit 125.
"""

import json


def emit(event: str, **fields) -> None:
    """Print one event line (flushed: a reader sees it at once)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def output(stream: str, data: bytes | str) -> None:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    emit("output", stream=stream, data=data)


def exit_event(code: int) -> None:
    emit("exit", code=code)
