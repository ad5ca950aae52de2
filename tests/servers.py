"""Real servers on loopback for the remote-read tests, and a proxy that counts bytes on the wire.

- :class:`RangeServer`: an HTTP/1.1 file server with single-range support (``Range: bytes=a-b``,
  ``bytes=a-``, ``bytes=-n``), keep-alive, and two faults a real deployment shows: ignoring
  ranges (a server or proxy that always sends the whole file) and dropping the connection after
  a number of bytes (an interrupted download).
- :class:`MotoS3`: moto's S3 server mode in its own process (``python -m moto.server``).
- :class:`CountingProxy`: a TCP proxy in front of either; ``bytes_down`` is every byte the
  server sent to the client, headers included: what was actually transferred.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: fsspec reuses connections
    server: "_HTTPServer"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.server.root / unquote(urlsplit(self.path).path).lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        if rng and self.server.honour_ranges:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:  # suffix: the last n bytes
                start = max(0, size - int(m.group(2)))
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if head:
            return
        cut = self.server.cut_at
        stop = cut if cut is not None and start < cut < end else end
        with open(path, "rb") as fh:
            fh.seek(start)
            left = stop - start
            while left > 0:
                data = fh.read(min(left, 1 << 20))
                self.wfile.write(data)
                left -= len(data)
        if stop < end:  # an interrupted transfer: the connection drops mid-body
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    honour_ranges = True
    cut_at: int | None = None  # a response spanning this file offset drops the connection there
    ranges: list[str | None]


class RangeServer:
    """``with RangeServer(folder) as srv: srv.url("a.anc")``; the files under ``folder``."""

    def __init__(self, root: Path) -> None:
        self._srv = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._srv.root = Path(root)
        self._srv.ranges = []
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._srv.server_address[1]

    def url(self, name: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/{name}"

    def honour_ranges(self, on: bool) -> None:
        self._srv.honour_ranges = on

    def cut_at(self, offset: int | None) -> None:
        """Drop the connection of any response spanning file offset ``offset``, once the bytes
        before it are sent (None: never)."""
        self._srv.cut_at = offset

    @property
    def ranges(self) -> list[str | None]:
        return self._srv.ranges

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._srv.shutdown()
        self._srv.server_close()


class CountingProxy:
    """A TCP proxy to ``127.0.0.1:target_port`` counting the bytes each way."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.bytes_down = 0  # server -> client
        self.bytes_up = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.bytes_down = self.bytes_up = self.connections = 0

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self._lock:  # counted before it is forwarded: a reader never sees more
                    if down:
                        self.bytes_down += len(data)
                    else:
                        self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """moto's S3 in server mode, in its own process on loopback."""

    def __init__(self) -> None:
        self.port = free_port()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                       "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("moto server did not start")
                time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for a process reading ``s3://`` from ``endpoint``: fsspec's own configuration
    variables (what a user sets for any S3-compatible store)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}
