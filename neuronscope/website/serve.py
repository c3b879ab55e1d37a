"""`neuronscope serve DIR`: serve a written report on the loopback interface."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

from ..errors import NeuronscopeError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def make_server(root: Path, port: int = 8000, host: str = "127.0.0.1", *,
                log: bool = True) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the report in ``root``, bound to the loopback interface only."""
    root = Path(root)
    if not (root / "index.html").exists():
        raise NeuronscopeError(f"{root} holds no report (no index.html): write one with "
                               "`neuronscope report ... --out DIR` or `neuronscope demo`.")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler if log else _Quiet, directory=str(root))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise NeuronscopeError(f"Cannot listen on {host}:{port} ({e.strerror}): try another --port.") from None


def serve(root: Path, port: int = 8000) -> None:
    """Serve ``root`` until interrupted."""
    httpd = make_server(root, port)
    print(f"Serving {root} at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    with httpd:
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
