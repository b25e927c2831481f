"""Loopback stand-ins allowed by the design: a moto S3 server and a kmock Kubernetes API."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import boto3
from moto.server import ThreadedMotoServer

ISVC_RESOURCE = "serving.kserve.io/v1beta1/inferenceservices"


@contextlib.contextmanager
def moto_s3(bucket: str | None = None) -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server on loopback (optionally with a bucket)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        if bucket:
            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="us-east-1").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def s3_env(monkeypatch, tmp_path) -> None:
    """Fake credentials, and no lookups beyond loopback (no shared files, no instance metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


class KubeAPI:
    """kmock's in-memory Kubernetes emulator served on loopback from a background event loop."""

    def __init__(self) -> None:
        self.url = ""
        self.handler = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="kmock", daemon=True)

    async def _main(self) -> None:
        import kmock

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            handler.resources[ISVC_RESOURCE] = {"namespaced": True, "kind": "InferenceService"}
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KubeAPI:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def api(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.CustomObjectsApi(client.ApiClient(configuration))
