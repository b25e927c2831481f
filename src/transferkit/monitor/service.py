"""The monitor's HTTP interface (stdlib ``http.server``; metrics via ``prometheus-client``).

- ``POST /v1/records``: ``{"records": [...]}`` sampled by the serving side (:mod:`transferkit.monitor.records`);
- ``POST /v1/feedback``: ``{"labels": [{"request_id": ..., "label": ...}, ...]}`` late labels;
- ``POST /v1/events``: CloudEvents of KServe's payload logger (:mod:`transferkit.monitor.events`);
- ``GET /metrics``: Prometheus exposition; ``GET /v1/windows``: every window as JSON;
- ``GET /reports/window-<n>.html``: the report of a window; ``GET /healthz``.

A bad body gets HTTP 400 with the one-line error; the service keeps running.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from transferkit.errors import MonitorError
from transferkit.monitor.events import EventIngester
from transferkit.monitor.state import Monitor

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
_REPORT = re.compile(r"^/reports/(window-\d+\.(?:html|json|md))$")


class _Handler(BaseHTTPRequestHandler):
    monitor: Monitor
    events: EventIngester | None
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _raw(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            raise MonitorError(f"body: expected a body of 1 to {MAX_BODY} bytes, got {length}")
        return self.rfile.read(length)

    def _body(self) -> Any:
        raw = self._raw()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MonitorError(f"body: not valid JSON ({exc})") from None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.monitor.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(200, {"status": "ok", "windows": len(self.monitor.windows)})
        elif path == "/v1/windows":
            self._json(200, self.monitor.summary())
        elif (match := _REPORT.match(path)) and self.monitor.report_dir is not None \
                and (self.monitor.report_dir / match.group(1)).is_file():
            kind = {"html": "text/html; charset=utf-8", "json": "application/json", "md": "text/markdown"}
            self._send(200, (self.monitor.report_dir / match.group(1)).read_bytes(),
                       kind[match.group(1).rsplit(".", 1)[1]])
        else:
            self._json(404, {"error": f"{path}: not found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/v1/events":
                if self.events is None:
                    raise MonitorError("events: this monitor does not accept KServe payload-logger events")
                self._json(200, self.events.accept(dict(self.headers.items()), self._raw()))
                return
            body = self._body()
            if path == "/v1/records":
                records = body.get("records") if isinstance(body, dict) else body
                if not isinstance(records, list):
                    raise MonitorError("records: expected a list of record objects")
                self._json(200, {"accepted": self.monitor.add(records)})
            elif path == "/v1/feedback":
                labels = body.get("labels") if isinstance(body, dict) else None
                if not isinstance(labels, list):
                    raise MonitorError("labels: expected a list of {request_id, label} objects")
                pairs = []
                for row, item in enumerate(labels):
                    if not isinstance(item, dict) or not item.get("request_id") or item.get("label") is None:
                        raise MonitorError(f"labels[{row}]: expected request_id and label")
                    pairs.append((str(item["request_id"]), str(item["label"])))
                self._json(200, self.monitor.feedback(pairs))
            else:
                self._json(404, {"error": f"{path}: not found"})
        except MonitorError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})


class MonitorServer:
    """The HTTP service around a :class:`Monitor` (``with MonitorServer(...) as server:`` in tests).

    Args:
        monitor: The state.
        host: Bind address.
        port: Port (0 picks a free one; see :attr:`url`).
        events: Accepts KServe payload-logger CloudEvents on ``POST /v1/events`` (None: refused with HTTP 400).
    """

    def __init__(self, monitor: Monitor, host: str = "127.0.0.1", port: int = 8008,
                 events: EventIngester | None = None) -> None:
        handler = type("Handler", (_Handler,), {"monitor": monitor, "events": events})
        self.monitor = monitor
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL (``http://host:port``)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until interrupted."""
        logger.info("Monitor listening on %s", self.url)
        self.httpd.serve_forever()

    def __enter__(self) -> MonitorServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="monitor-http", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop serving and the window worker."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.monitor.close()
