"""A small threaded HTTP(S) server on loopback that both API emulators are built on."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


class DropConnection(Exception):
    """Raised by a handler to close the connection without sending any response."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw_target: str

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON, bytes/str -> as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (killed, timed out) is no error of the server's: no traceback."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)):
            super().handle_error(request, client_address)


class EmulatorServer:
    """Serves `handler` on 127.0.0.1 in a background thread; HTTPS when given an SSL context."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None,
                 latency: float = 0.0, port: int = 0) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.latency = latency
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> str:
        server = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without this each response waits ~40 ms for the
                # client's delayed ACK (Nagle), which no real API makes its clients do.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _read_chunked(self) -> bytes:
                """A body sent with Transfer-Encoding: chunked (what requests does for a generator)."""
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the blank line
                    pass
                return b"".join(parts)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked()
                else:
                    body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw_target=self.path,
                )
                if server.latency:
                    time.sleep(server.latency)
                try:
                    response = server.handler(request)
                except DropConnection:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                payload = response.encode()
                self.send_response_only(response.status)
                self.send_header("Server", self.version_string())
                if not any(name.lower() == "date" for name in response.headers):  # an emulator's own clock wins
                    self.send_header("Date", self.date_time_string())
                if payload or response.status not in (204, 304):
                    self.send_header("Content-Type", response.content_type)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if payload:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        httpd = _Server(("127.0.0.1", self._port), _RequestHandler)
        httpd.daemon_threads = True
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="emulator", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def loopback_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a certificate for 127.0.0.1/localhost; returns the server context and
    the CA bundle path to give clients through SSL_CERT_FILE / REQUESTS_CA_BUNDLE."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "emulator-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return context, bundle
