"""Running the app: a socket bound first (a clear error if the port is taken), uvicorn on it, and the
discovery record for as long as it serves."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading

from lexsearch.errors import UsageError
from lexsearch.serve import discovery
from lexsearch.serve.app import create_app
from lexsearch.serve.service import SearchService

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
# The largest request head (request line and headers) read: h11's default of 16 KB is less than the request
# line of the longest query the command accepts (``lexsearch.limits.MAX_QUERY_CHARS`` characters, each up to 12 bytes
# as %XX of UTF-8), and such a query must get the command's answer, not a closed connection.
MAX_REQUEST_HEAD = 64 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server using it? "
            "Pick another with --port."
        ) from None
    sock.listen(128)
    return sock


class Server:
    """The app of ``service`` served by uvicorn on ``host:port``; ``serve()`` blocks, ``stop()`` ends it."""

    def __init__(self, service: SearchService, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        import uvicorn

        self.service = service
        self.host = host
        self.sock = bind(host, port)
        self.port = int(self.sock.getsockname()[1])
        # Bound to loopback: answer only requests addressed to loopback names (no DNS rebinding).
        allowed = LOOPBACK_NAMES if is_loopback(host) else None
        app = create_app(service, allowed_hosts=allowed)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        )
        self._uvicorn = uvicorn.Server(config)
        self._record = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return discovery.ServerInfo(self.host, self.port, 0, "").url

    def serve(self) -> None:
        """Serve until stopped (Ctrl-C, or ``stop()`` from another thread)."""
        self._record = discovery.register(self.host, self.port, self.service.collection.path)
        try:
            self._uvicorn.run(sockets=[self.sock])
        finally:
            discovery.unregister(self._record)
            self.sock.close()

    def start_in_thread(self) -> threading.Thread:
        """Serve from a background thread (tests, the benchmark); returns once the server accepts."""
        thread = threading.Thread(target=self.serve, name="lexsearch-serve", daemon=True)
        thread.start()
        self._thread = thread
        while not self._uvicorn.started and thread.is_alive():
            thread.join(0.02)
        return thread

    def stop(self) -> None:
        """Ask the server to stop; from ``start_in_thread``, wait until it has (and its record is gone)."""
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
