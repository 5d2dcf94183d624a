"""A loopback HTTP server for image-fetch tests that records every connection it gets."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """Serves /red.png, /blue.png, /slow.png (after 3 s), /big (6 MB, no Content-Length), /text, /missing,
    /redirect?to=URL; `hits` lists (path, user-agent) of every request received."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.hits: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.hits.append((self.path, self.headers.get("User-Agent", "")))
                path, _, query = self.path.partition("?")
                try:
                    if path in ("/red.png", "/blue.png", "/slow.png"):
                        if path == "/slow.png":
                            time.sleep(3)
                        self._send(png((255, 0, 0) if path != "/blue.png" else (0, 0, 255)), "image/png")
                    elif path == "/text":
                        self._send(b"hello, not an image", "text/plain")
                    elif path == "/big":
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.end_headers()
                        for _ in range(96):
                            self.wfile.write(b"\0" * 65536)
                    elif path == "/redirect":
                        self.send_response(302)
                        self.send_header("Location", query.removeprefix("to="))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
