"""A small stub of the KFP v2beta1 REST API on loopback that records what clients post (DESIGN.md §6)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class KfpApiStub:
    """Serves healthz, experiments and runs; stores posted experiments and runs in memory."""

    def __init__(self, *, require_token: str | None = None) -> None:
        self.experiments: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.require_token = require_token
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization")
                stub.auth_headers.append(header)
                if stub.require_token and header != f"Bearer {stub.require_token}":
                    self._send(401, {"error": "unauthenticated", "code": 16})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    self._send(200, {"multi_user": False})
                elif path == "/apis/v2beta1/experiments":
                    self._send(200, {"experiments": stub.experiments, "total_size": len(stub.experiments)})
                else:
                    self._send(404, {"error": f"no route {path}"})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/apis/v2beta1/experiments":
                    experiment = {**body, "experiment_id": f"exp-{len(stub.experiments) + 1}"}
                    stub.experiments.append(experiment)
                    self._send(200, experiment)
                elif self.path == "/apis/v2beta1/runs":
                    run = {**body, "run_id": f"run-{len(stub.runs) + 1}", "state": "PENDING"}
                    stub.runs.append(run)
                    self._send(200, run)
                else:
                    self._send(404, {"error": f"no route {self.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KfpApiStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
