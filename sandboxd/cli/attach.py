"""``run`` and ``attach``: stream a sandbox's output, forward stdin, end with its exit code.

SIGINT once asks sandboxd to stop the sandbox (the output keeps coming until the exit frame);
twice detaches. The exit code is the command's (137 for an OOM kill, 125 when sandboxd
refused or failed)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from sandboxd.cli.client import ApiError, Client, Json
from sandboxd.cli.common import EXIT_DAEMON, EXIT_OOM, error_line


def exit_code_of(result: Json) -> int:
    """The code ``run`` exits with, from an exit frame or a wait answer."""
    if result.get("oom_killed"):
        return EXIT_OOM
    code = result.get("exit_code")
    return code if isinstance(code, int) else EXIT_DAEMON


def _pump_stdin(ws: Any, stdin: Any) -> None:
    """Thread body for ``-i``: forward our stdin as ``\\x00`` frames, then ``\\x00`` at EOF."""
    try:
        while True:
            chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            if not chunk:
                break
            ws.send_binary(b"\x00" + chunk)
        ws.send_binary(b"\x00")
    except Exception:  # the socket closed under us: the sandbox has exited
        return


class _Interrupts:
    """SIGINT while attached: the first asks sandboxd to stop the sandbox (we keep reading
    until the exit frame); the second detaches. The stop runs in a thread so the WebSocket
    read is never torn mid-frame."""

    def __init__(self, client: Client, ref: str) -> None:
        self.client, self.ref, self.count = client, ref, 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        print("sandboxctl: stopping the sandbox…", file=sys.stderr, flush=True)
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        try:
            self.client.stop_sandbox(self.ref)
        except ApiError as exc:
            error_line(str(exc))


def write_out(stream: Any, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def receive_until_exit(ws: Any) -> Json | None:
    """Copy output frames to our stdout/stderr; return the exit frame (None if none came)."""
    import websocket

    while True:
        try:
            opcode, data = ws.recv_data()
        except (websocket.WebSocketException, OSError):
            return None  # the connection dropped: the caller asks ``wait`` instead
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return json.loads(data)
        if data[:1] == b"\x01":
            write_out(sys.stdout.buffer, data[1:])
        elif data[:1] == b"\x02":
            write_out(sys.stderr.buffer, data[1:])


def attach(client: Client, ref: str, interactive: bool) -> int:
    """Stream the sandbox's output until it exits; return its exit code."""
    ws = client.attach(ref)
    if interactive:
        threading.Thread(target=_pump_stdin, args=(ws, sys.stdin.buffer), daemon=True).start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _Interrupts(client, ref)) if in_main else None
    try:
        result = receive_until_exit(ws)
        if result is None:  # closed without an exit frame: ask for it
            result = client.wait_sandbox(ref)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        ws.close()
    return exit_code_of(result)
