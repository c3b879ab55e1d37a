"""`neuronscope serve DIR`: serve a written report on the loopback interface."""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

from ..errors import NeuronscopeError


def serve(root: Path, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve ``root`` over HTTP until interrupted (binds 127.0.0.1 only)."""
    if not (root / "index.html").exists():
        raise NeuronscopeError(f"{root} holds no report (no index.html): write one with "
                               "`neuronscope report ... --out DIR` or `neuronscope demo`.")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    try:
        httpd = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise NeuronscopeError(f"Cannot listen on {host}:{port} ({e.strerror}): try another --port.") from None
    print(f"Serving {root} at http://{host}:{httpd.server_address[1]}/ (Ctrl-C to stop)")
    with httpd:
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
