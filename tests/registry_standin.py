"""A STAND-IN for the Kubeflow Model Registry REST API (the real server is Go + a database and cannot run here).

A real HTTP server on loopback with an in-memory store, implementing the calls the official client
(``kubeflow.hub.ModelRegistryClient`` over ``model_registry``) makes, as ``kmock`` does for Kubernetes. Request
bodies are validated with the client's own OpenAPI models (``mr_openapi.models``: strict types, required
fields) and every response is built through them, so a body the real API would reject fails here too, and
a response the client could not parse cannot be produced. Paths: ``/api/model_registry/v1/...``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from mr_openapi import models as m

PREFIX = "/api/model_registry/v1"
_KINDS = {
    # collection -> (model for responses, create body model, update body model, find path)
    "registered_models": (m.RegisteredModel, m.RegisteredModelCreate, m.RegisteredModelUpdate, "registered_model"),
    "model_versions": (m.ModelVersion, m.ModelVersionCreate, m.ModelVersionUpdate, "model_version"),
    "model_artifacts": (m.ModelArtifact, m.ModelArtifactCreate, m.ModelArtifactUpdate, "model_artifact"),
}
_FIND = {find: kind for kind, (*_, find) in _KINDS.items()}


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelRegistryStandIn:
    """In-memory store + HTTP server. ``url`` is what ``--registry-url`` takes; ``requests`` logs every call."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.store: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _KINDS}
        self.parent: dict[str, str] = {}  # model_artifacts id -> model_versions id
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ModelRegistryStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------ store

    def _create(self, kind: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
        model, create, _, _ = _KINDS[kind]
        payload = create.from_dict(body).to_dict() if create is not None else body
        if kind != "model_artifacts" and payload.get("name") is None:
            raise _Error(400, "name is required")
        for existing in self.store[kind].values():
            same_parent = existing.get("registeredModelId") == payload.get("registeredModelId")
            if kind != "model_artifacts" and existing["name"] == payload["name"] and same_parent:
                raise _Error(409, f"{kind[:-1]} {payload['name']!r} already exists")
        now = str(int(time.time() * 1000))
        obj = {**payload, **extra, "id": str(next(self._ids)), "createTimeSinceEpoch": now,
               "lastUpdateTimeSinceEpoch": now}
        obj = model.from_dict(obj).to_dict()
        self.store[kind][obj["id"]] = obj
        return obj

    def _update(self, kind: str, ident: str, body: dict[str, Any]) -> dict[str, Any]:
        model, _, update, _ = _KINDS[kind]
        current = self._get(kind, ident)
        changes = update.from_dict(body).to_dict()
        obj = model.from_dict({**current, **changes, "lastUpdateTimeSinceEpoch": str(int(time.time() * 1000))})
        self.store[kind][ident] = obj.to_dict()
        return self.store[kind][ident]

    def _get(self, kind: str, ident: str) -> dict[str, Any]:
        if ident not in self.store[kind]:
            raise _Error(404, f"{kind[:-1]} {ident} not found")
        return self.store[kind][ident]

    def _find(self, kind: str, query: dict[str, str]) -> dict[str, Any]:
        for obj in self.store[kind].values():
            if "name" in query and obj.get("name") != query["name"]:
                continue
            if "externalId" in query and obj.get("externalId") != query["externalId"]:
                continue
            parent = query.get("parentResourceId")
            if parent is not None:
                owner = obj.get("registeredModelId") if kind == "model_versions" else self.parent.get(obj["id"])
                if owner != parent:
                    continue
            return obj
        raise _Error(404, f"no {kind[:-1]} matches {query}")

    @staticmethod
    def _page(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        size = int(query.get("pageSize") or 100)
        start = int(query.get("nextPageToken") or 0)
        if query.get("sortOrder") == "DESC":
            items = list(reversed(items))
        chunk = items[start : start + size]
        token = str(start + size) if start + size < len(items) else ""
        return {"items": chunk, "size": len(chunk), "pageSize": size, "nextPageToken": token}

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path[len(PREFIX):].strip("/").split("/")
        with self._lock:
            if method == "GET" and len(parts) == 1 and parts[0] in _FIND:
                return 200, self._find(_FIND[parts[0]], query)
            kind = parts[0]
            if kind not in _KINDS:
                raise _Error(404, f"unknown resource {kind}")
            if len(parts) == 1:
                if method == "GET":
                    return 200, self._page(list(self.store[kind].values()), query)
                if method == "POST":
                    return 201, self._create(kind, body)
            elif len(parts) == 2:
                if method == "GET":
                    return 200, self._get(kind, parts[1])
                if method == "PATCH":
                    return 200, self._update(kind, parts[1], body)
            elif len(parts) == 3 and kind == "registered_models" and parts[2] == "versions":
                self._get(kind, parts[1])
                if method == "GET":
                    versions = [v for v in self.store["model_versions"].values()
                                if v["registeredModelId"] == parts[1]]
                    return 200, self._page(versions, query)
                if method == "POST":
                    return 201, self._create("model_versions", {**body, "registeredModelId": parts[1]})
            elif len(parts) == 3 and kind == "model_versions" and parts[2] == "artifacts":
                version = self._get(kind, parts[1])["id"]
                if method == "GET":
                    arts = [m.Artifact.from_dict(a).to_dict() for i, a in self.store["model_artifacts"].items()
                            if self.parent.get(i) == version]
                    return 200, self._page(arts, query)
                if method == "POST":
                    if not isinstance(body, dict) or body.get("artifactType") != "model-artifact":
                        raise _Error(400, "the stand-in stores model artifacts only")
                    artifact = m.Artifact.from_dict(body).actual_instance.to_dict()
                    artifact.pop("artifactType", None)
                    existing = [i for i, p in self.parent.items() if p == version
                                and self.store["model_artifacts"][i].get("name") == artifact.get("name")]
                    if existing:
                        return 200, self._update("model_artifacts", existing[0], artifact)
                    created = self._create("model_artifacts", artifact)
                    self.parent[created["id"]] = version
                    return 201, created
        raise _Error(405, f"{method} {path} is not part of the stand-in")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                parsed = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
                standin.requests.append((method, parsed.path))
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    if standin.token is not None and self.headers.get("Authorization") != f"Bearer {standin.token}":
                        raise _Error(401, "missing or wrong bearer token")
                    if not parsed.path.startswith(PREFIX):
                        raise _Error(404, f"{parsed.path}: not a model registry path")
                    body = json.loads(self.rfile.read(length) or b"null") if length else None
                    status, payload = standin.dispatch(method, parsed.path, query, body)
                except _Error as exc:
                    status, payload = exc.status, {"code": str(exc.status), "message": str(exc)}
                except (ValueError, TypeError) as exc:  # pydantic validation errors are ValueErrors
                    status, payload = 400, {"code": "400", "message": f"invalid body: {exc}".splitlines()[0]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler
