"""A local HTTP server for download tests (no network): serves files from memory on 127.0.0.1 in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """``files`` (name -> bytes) at ``url + <any folder>/<name>``; records every path asked for.

    Paths that start with one of ``failing`` answer 503; the first ``fail_first`` requests answer 503 too;
    names in ``truncated`` announce their full length but send half of it and close the connection.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.failing: tuple[str, ...] = ()
        self.truncated: set[str] = set()
        self.fail_first = 0
        self.requested: list[str] = []
        self.url = ""

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        self.requested.append(path)
        name = path.rsplit("/", 1)[-1]
        if len(self.requested) <= self.fail_first or path.startswith(self.failing):
            handler.send_error(503, "unavailable")
            return
        if name not in self.files:
            handler.send_error(404, "not found")
            return
        body = self.files[name]
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if name in self.truncated:
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)


@contextmanager
def serving() -> Iterator[FileServer]:
    """A :class:`FileServer` listening on a free port of 127.0.0.1 until the block ends."""
    server = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            server.answer(self)

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
