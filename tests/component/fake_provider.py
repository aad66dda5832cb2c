"""A fake model provider on loopback: answers the OpenAI, Anthropic and Gemini HTTP APIs with
scripted bodies, streaming Server-Sent Events frame by frame, so that the real SDK clients
(pointed at it with ``base_url``) run their real stream classes.

Frames are built by the tests from the SDKs' own models (``sse``); a script can hold the
stream after its first frame until the test says it saw that frame, which proves a wrapper
hands chunks through as they arrive instead of buffering the stream.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame; ``data`` is a dict or an SDK model (dumped as the wire has it)."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json", by_alias=True, exclude_none=True)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


@dataclass
class Script:
    status: int = 200
    frames: list[bytes] | None = None  # SSE frames; None: answer ``body`` as JSON
    body: Any = None
    hold_after_first: threading.Event | None = None  # wait for it after the first frame
    held_ok: bool | None = None  # whether the hold was released (not timed out)
    requests: list[dict[str, Any]] = field(default_factory=list)


class FakeProvider:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                return None

            def do_POST(self) -> None:  # http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                script = provider.match(self.path)
                if script is None:
                    self.send_error(404)
                    return
                script.requests.append(json.loads(raw or b"{}"))
                if script.frames is None or script.status != 200:
                    body = json.dumps(script.body or {}).encode()
                    self.send_response(script.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i, frame in enumerate(script.frames):
                    try:
                        self.wfile.write(frame)
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client closed the stream early
                    if i == 0 and script.hold_after_first is not None:
                        script.held_ok = script.hold_after_first.wait(timeout=10)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def match(self, path: str) -> Script | None:
        for prefix, script in self.scripts.items():
            if path.startswith(prefix):
                return script
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
