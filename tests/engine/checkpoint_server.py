"""A loopback HTTP server standing in for the official checkpoints' host: a small file with a known sha256.

It honours Range requests (or ignores them), can drop the connection part-way through the file, and can serve
other bytes than the catalogue's. The ``file_server`` and ``models_dir`` fixtures (``tests/engine/conftest.py``)
swap vit_b's catalogue entry for this file.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path
from typing import List, Optional

from pointsam_engine.catalog import CATALOG

PAYLOAD = hashlib.shake_256(b"pointsam test checkpoint").digest(3_000_000)  # three 1 MiB blocks, a bit less
FILE = CATALOG["vit_b"].file


class FileServer:
    """Serves ``payload`` at ``/<FILE>`` on a loopback port; logs each request's Range header and the length
    of the body it answered with."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.ignore_range = False
        self.drop_at: Optional[int] = None  # close the connection after this many bytes of the file
        self.block_delay = 0.0  # seconds between 64 KB blocks (a slow server, to cancel part-way)
        self.ranges: List[Optional[str]] = []
        self.lengths: List[int] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != f"/{FILE}":
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = 0
                if wanted and not server.ignore_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.payload):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload) - start))
                server.lengths.append(len(server.payload) - start)
                self.end_headers()
                self._send(start)

            def _send(self, start: int):
                end = len(server.payload) if server.drop_at is None else max(server.drop_at, start)
                for offset in range(start, end, 1 << 16):
                    chunk = server.payload[offset:min(offset + (1 << 16), end)]
                    try:
                        self.wfile.write(chunk)
                    except OSError:  # the client went away (cancelled)
                        return
                    time.sleep(server.block_delay)
                if server.drop_at is not None:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def part_file(models_dir: Path) -> Path:
    return models_dir / f".{FILE}.part"


def visible_files(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
