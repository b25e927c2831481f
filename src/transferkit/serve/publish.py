"""Publish model versions into a Triton model repository on a filesystem/PVC path or ``s3://``.

Rules every store follows:

- Versions are integers that only grow. The next version is one above the highest version that ever
  existed for the deployment (a high-water mark is kept in ``NAME/DEPLOYMENT.json``), so a version
  number removed after a failed rollout is never reused.
- A version folder is written under a temporary name and renamed when complete (on S3: uploaded under
  a temporary prefix, then copied to the final prefix and the temporary objects deleted), so Triton
  never loads a half-written version.
- Model-level files (``config.pbtxt``, ``configs/``, ``labels.txt``) are replaced one by one atomically
  and their previous contents kept in memory, so :meth:`Publication.undo` restores the repository
  exactly as it was.
- After a successful rollout, only the newest ``keep`` versions stay (:meth:`RepositoryStore.prune`).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from transferkit.errors import AuthError, ConfigError, ServerUnavailableError, ServingError
from transferkit.serve.repository import ModelBundle

logger = logging.getLogger(__name__)

RECORD_FILE = "DEPLOYMENT.json"


def _version_of(name: str) -> int | None:
    return int(name) if name.isdigit() and not name.startswith("0") else None


@dataclass
class Publication:
    """What one publish changed, so that it can be undone."""

    store: RepositoryStore
    bundle_name: str
    models: list[str]
    version: int
    new_versions: list[str] = field(default_factory=list)  # models whose version folder was created
    previous_files: dict[str, bytes | None] = field(default_factory=dict)  # relative path -> old bytes
    undone: bool = False

    def undo(self) -> None:
        """Remove the new version folders and restore model-level files (idempotent)."""
        if self.undone:
            return
        for model in reversed(self.new_versions):
            with contextlib.suppress(Exception):
                self.store.remove_version(model, self.version)
        for rel, data in self.previous_files.items():
            try:
                if data is None:
                    self.store.delete_file(rel)
                else:
                    self.store.write_file(rel, data)
            except Exception as exc:  # pragma: no cover - best effort, reported
                logger.error("undo: could not restore %s (%s)", rel, exc)
        self.undone = True
        logger.info("Unpublished version %d of %s", self.version, self.bundle_name)


class RepositoryStore(abc.ABC):
    """Common publishing logic; subclasses implement the primitive file operations."""

    uri: str

    # --- primitives ---
    @abc.abstractmethod
    def list_dirs(self, rel: str) -> list[str]:
        """Immediate sub-folder names of ``rel`` (empty when absent)."""

    @abc.abstractmethod
    def read_file(self, rel: str) -> bytes | None:
        """Bytes of a file, or None when absent."""

    @abc.abstractmethod
    def write_file(self, rel: str, data: bytes) -> None:
        """Atomically replace one file."""

    @abc.abstractmethod
    def delete_file(self, rel: str) -> None:
        """Delete one file if present."""

    @abc.abstractmethod
    def put_version_dir(self, model: str, version: int, src: Path) -> None:
        """Copy ``src`` to ``model/version`` via a temporary name and a rename."""

    @abc.abstractmethod
    def remove_version(self, model: str, version: int) -> None:
        """Delete ``model/version`` if present."""

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise publishers of one deployment (no-op where the store cannot lock)."""
        yield

    @abc.abstractmethod
    def check_access(self) -> None:
        """Fail early (before anything is written) when the store is unreachable or credentials miss."""

    # --- shared logic ---
    def versions(self, model: str) -> list[int]:
        """Version numbers present for ``model``, ascending."""
        return sorted(v for v in (_version_of(d) for d in self.list_dirs(model)) if v is not None)

    def record(self, name: str) -> dict[str, Any]:
        """The deployment record (``NAME/DEPLOYMENT.json``), empty when absent."""
        raw = self.read_file(f"{name}/{RECORD_FILE}")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ServingError(f"{self.uri}/{name}/{RECORD_FILE}: not valid JSON ({exc})") from exc

    def write_record(self, name: str, record: dict[str, Any]) -> None:
        """Replace the deployment record."""
        self.write_file(f"{name}/{RECORD_FILE}", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())

    def next_version(self, name: str, models: list[str]) -> int:
        """One above the highest version any model of the deployment ever had."""
        highest = int(self.record(name).get("high_water_version", 0))
        for model in models:
            existing = self.versions(model)
            if existing:
                highest = max(highest, existing[-1])
        return highest + 1

    def publish(self, bundle: ModelBundle) -> Publication:
        """Copy a built bundle into the store as version ``bundle.version``.

        On failure everything written so far is removed again before the error propagates.
        """
        publication = Publication(self, bundle.name, list(bundle.models), bundle.version)
        version = str(bundle.version)
        try:
            for model in bundle.models:
                if bundle.version in self.versions(model):
                    raise ServingError(f"{self.uri}/{model}/{version}: version already exists (versions only grow)")
            # Version folders first (ignored by a running explicit-mode Triton until it is told to
            # load), then model-level files; entry model last.
            for model in bundle.models:
                self.put_version_dir(model, bundle.version, bundle.root / model / version)
                publication.new_versions.append(model)
            for model in bundle.models:
                for path in sorted((bundle.root / model).rglob("*")):
                    rel_in_model = path.relative_to(bundle.root / model)
                    if path.is_dir() or rel_in_model.parts[0] == version:
                        continue
                    rel = f"{model}/{rel_in_model.as_posix()}"
                    publication.previous_files.setdefault(rel, self.read_file(rel))
                    self.write_file(rel, path.read_bytes())
            # The record is not restored by undo(): its high-water mark keeps a failed version's
            # number from ever being reused.
            record = self.record(bundle.name)
            record.update(name=bundle.name, models=bundle.models,
                          high_water_version=max(int(record.get("high_water_version", 0)), bundle.version))
            self.write_record(bundle.name, record)
        except BaseException:
            publication.undo()
            raise
        logger.info("Published %s version %d to %s", bundle.name, bundle.version, self.uri)
        return publication

    def prune(self, models: list[str], keep: int, *, protect: int | None = None) -> list[int]:
        """Delete all but the newest ``keep`` versions of each model (never ``protect``).

        Returns:
            Removed version numbers (union over the models).
        """
        removed: set[int] = set()
        for model in models:
            existing = self.versions(model)
            for version in existing[: max(0, len(existing) - keep)]:
                if version == protect:
                    continue
                self.remove_version(model, version)
                removed.add(version)
        if removed:
            logger.info("Retired versions %s of %s", sorted(removed), ", ".join(models))
        return sorted(removed)


class LocalStore(RepositoryStore):
    """A repository folder on a local disk or a mounted PVC."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def check_access(self) -> None:
        """Create the root folder; fail clearly when that is impossible."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServingError(f"{self.root}: cannot create the model repository ({exc.strerror})") from exc
        if not os.access(self.root, os.W_OK):
            raise ServingError(f"{self.root}: model repository is not writable")

    def _path(self, rel: str) -> Path:
        path = (self.root / rel).absolute()
        if self.root not in path.parents and path != self.root:
            raise ServingError(f"{rel}: escapes the repository {self.root}")
        return path

    def list_dirs(self, rel: str) -> list[str]:  # noqa: D102
        path = self._path(rel)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []

    def read_file(self, rel: str) -> bytes | None:  # noqa: D102
        path = self._path(rel)
        return path.read_bytes() if path.is_file() else None

    def write_file(self, rel: str, data: bytes) -> None:  # noqa: D102
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def delete_file(self, rel: str) -> None:  # noqa: D102
        with contextlib.suppress(FileNotFoundError):
            self._path(rel).unlink()

    def put_version_dir(self, model: str, version: int, src: Path) -> None:  # noqa: D102
        final = self._path(f"{model}/{version}")
        final.parent.mkdir(parents=True, exist_ok=True)
        # Hidden, non-numeric temp name in the same folder: same filesystem (rename is atomic) and
        # Triton ignores it as a version.
        tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_version(self, model: str, version: int) -> None:  # noqa: D102
        final = self._path(f"{model}/{version}")
        if final.is_dir():
            aside = final.parent / f".old-{version}-{uuid.uuid4().hex[:8]}"
            os.rename(final, aside)  # disappears atomically for Triton, then deleted at leisure
            shutil.rmtree(aside, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Inter-process lock file ``.NAME.publish.lock`` at the repository root."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.publish.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class S3Store(RepositoryStore):
    """A repository under ``s3://bucket/prefix`` (any S3-compatible endpoint).

    Credentials come from the usual AWS chain (environment, shared files, web identity); the
    endpoint from ``endpoint_url`` or ``AWS_ENDPOINT_URL``.
    """

    def __init__(self, uri: str, *, endpoint_url: str | None = None, attempts: int = 4) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"repository: {uri!r} is not an s3://bucket[/prefix] URI")
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.attempts = attempts
        self._client: Any = None

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            if session.get_credentials() is None:
                raise AuthError(
                    f"{self.uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "a profile, or a web identity)"
                )
            self._client = session.client(
                "s3", endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": self.attempts, "mode": "standard"},
                              connect_timeout=5, read_timeout=60),
            )
        return self._client

    def _translate(self, exc: Exception, what: str) -> Exception:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return AuthError(f"{self.uri}: no S3 credentials found for {what}")
        if isinstance(exc, EndpointConnectionError):
            return ServerUnavailableError(f"{self.uri}: S3 endpoint unreachable during {what} ({exc})")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403"):
                return AuthError(f"{self.uri}: S3 rejected the credentials during {what} ({code})")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and what == "head_bucket"):
                return ServingError(f"{self.uri}: bucket {self.bucket!r} does not exist")
            return ServingError(f"{self.uri}: S3 {what} failed ({code or exc})")
        return exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, what) from exc

    def check_access(self) -> None:
        """HEAD the bucket (credentials, endpoint, bucket)."""
        self._call("head_bucket", self.client.head_bucket, Bucket=self.bucket)

    def _list(self, prefix: str, *, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        keys, dirs = [], []
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in self._call("list", lambda: list(paginator.paginate(**kwargs))):
            keys += [o["Key"] for o in page.get("Contents", [])]
            dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return keys, dirs

    def list_dirs(self, rel: str) -> list[str]:  # noqa: D102
        base = self._key(rel).rstrip("/") + "/"
        _, dirs = self._list(base, delimiter="/")
        return sorted(d[len(base):].rstrip("/") for d in dirs)

    def read_file(self, rel: str) -> bytes | None:  # noqa: D102
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._translate(exc, f"get {rel}") from exc
        except BotoCoreError as exc:
            raise self._translate(exc, f"get {rel}") from exc
        return response["Body"].read()

    def write_file(self, rel: str, data: bytes) -> None:  # noqa: D102
        self._call(f"put {rel}", self.client.put_object, Bucket=self.bucket, Key=self._key(rel), Body=data)

    def delete_file(self, rel: str) -> None:  # noqa: D102
        self._call(f"delete {rel}", self.client.delete_object, Bucket=self.bucket, Key=self._key(rel))

    def _delete_prefix(self, prefix: str) -> None:
        keys, _ = self._list(prefix)
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("delete", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": chunk})

    def put_version_dir(self, model: str, version: int, src: Path) -> None:  # noqa: D102
        tmp = self._key(f"{model}/.tmp-{version}-{uuid.uuid4().hex[:8]}") + "/"
        final = self._key(f"{model}/{version}") + "/"
        files = sorted(p for p in src.rglob("*") if p.is_file())
        try:
            for path in files:
                key = tmp + path.relative_to(src).as_posix()
                self._call(f"upload {key}", self.client.upload_file, str(path), self.bucket, key)
            # S3 has no rename: server-side copies to the final prefix, then the temp prefix goes.
            for path in files:
                rel = path.relative_to(src).as_posix()
                self._call(f"copy {rel}", self.client.copy, {"Bucket": self.bucket, "Key": tmp + rel},
                           self.bucket, final + rel)
        except BaseException:
            with contextlib.suppress(Exception):
                self._delete_prefix(final)
            raise
        finally:
            with contextlib.suppress(Exception):
                self._delete_prefix(tmp)

    def remove_version(self, model: str, version: int) -> None:  # noqa: D102
        self._delete_prefix(self._key(f"{model}/{version}") + "/")


def open_store(uri: str | Path, *, s3_endpoint_url: str | None = None) -> RepositoryStore:
    """Return the store for a repository URI (local path, ``file://``, ``pvc://`` mount path, ``s3://``)."""
    text = str(uri)
    if text.startswith("s3://"):
        return S3Store(text, endpoint_url=s3_endpoint_url)
    if text.startswith("file://"):
        return LocalStore(urlparse(text).path)
    if "://" in text:
        raise ConfigError(f"repository: unsupported scheme in {text!r} (expected a path, file:// or s3://)")
    return LocalStore(text)
