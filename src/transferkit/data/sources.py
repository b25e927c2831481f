"""Dataset sources: local files and directories, ``s3://`` objects and prefixes, ``builtin:NAME``.

A source resolves to a list of local files of one format (CSV, TSV, JSON Lines or Parquet). Each file
is streamed in Arrow record batches restricted to the columns a task needs, so memory is bounded by the
batch size plus the columns kept, never by Python objects per row. Every error names the file as the
user wrote it (``s3://bucket/key``, ``builtin:NAME`` or the local path), never a temporary download.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from transferkit.errors import (
    AuthError,
    DataError,
    DatasetNotFoundError,
    SchemaError,
    ServerUnavailableError,
)

logger = logging.getLogger(__name__)

TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = (".gz", ".bz2")
SUPPORTED = ".csv, .tsv, .jsonl, .ndjson, .parquet (text formats may be .gz or .bz2 compressed)"
CSV_BLOCK_SIZE = 4 << 20
PARQUET_BATCH_ROWS = 65_536
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class SourceFile:
    """One local data file and how to refer to it in messages."""

    path: Path
    display: str
    format: str  # csv | tsv | jsonl | parquet


def detect_format(path: Path, display: str | None = None) -> str:
    """Return the format of a data file from its extension.

    Raises:
        DataError: The extension is not a supported format.

    """
    name = path.name.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    suffix = Path(name).suffix
    if suffix == ".parquet" and path.name.lower() != name:
        raise DataError(f"{display or path}: compressed Parquet files are not supported; Parquet compresses itself")
    if suffix == ".parquet":
        return "parquet"
    if suffix in TEXT_FORMATS:
        return TEXT_FORMATS[suffix]
    hint = "; JSON arrays are not supported, use JSON Lines (.jsonl)" if suffix == ".json" else ""
    shown = suffix or "(no extension)"
    raise DataError(f"{display or path}: unknown format {shown}; expected one of {SUPPORTED}{hint}")


def _is_hidden(path: Path, root: Path) -> bool:
    # Spark/Hadoop writers leave _SUCCESS and .crc files next to the data.
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def files_in_directory(root: Path, display_root: str) -> list[SourceFile]:
    """All data files below ``root`` (recursive, sorted, hidden files skipped); one format only.

    Raises:
        DataError: The directory holds no data file, or files of several formats.

    """
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and not _is_hidden(p, root))
    files: list[SourceFile] = []
    skipped: list[str] = []
    for path in candidates:
        display = f"{display_root.rstrip('/')}/{path.relative_to(root).as_posix()}"
        try:
            files.append(SourceFile(path, display, detect_format(path, display)))
        except DataError:
            skipped.append(path.name)
    if not files:
        found = f"found only: {', '.join(skipped[:5])}" if skipped else "it is empty"
        raise DataError(f"{display_root}: directory holds no data files ({found}); expected {SUPPORTED}")
    formats = sorted({f.format for f in files})
    if len(formats) > 1:
        raise DataError(f"{display_root}: directory mixes formats ({', '.join(formats)}); expected files of one format")
    if skipped:
        logger.warning("%s: ignoring %d file(s) of unknown format: %s", display_root, len(skipped),
                       ", ".join(skipped[:5]))
    return files


def _local_files(uri: str) -> list[SourceFile]:
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{uri}: file or directory not found")
    if path.is_dir():
        return files_in_directory(path, uri)
    return [SourceFile(path, uri, detect_format(path, uri))]


def _builtin_files(uri: str) -> list[SourceFile]:
    from transferkit.data.builtin import builtin_path, get_builtin

    dataset = get_builtin(uri)
    if dataset.kind == "images":
        raise DataError(f"{uri}: an image dataset ({dataset.description}); expected task image-classification "
                        "(--task image-classification)")
    if dataset.kind == "summarization":
        raise DataError(f"{uri}: a summarization dataset ({dataset.description}); expected --task summarization")
    if dataset.kind != "classification":
        raise DataError(
            f"{uri}: a {dataset.kind} dataset ({dataset.description}), not a labelled classification set; "
            "it is the source task of the forgetting check, expected e.g. builtin:movie-sentiment"
        )
    return [SourceFile(builtin_path(uri), uri, "parquet")]


def _s3_client():  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    # boto3 itself reads AWS_ENDPOINT_URL(_S3), AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_REGION...: nothing to
    # pass here, and nothing credential-like is ever logged. Retries are bounded (AWS_MAX_ATTEMPTS wins).
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", "4")
    retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
               "max_attempts": int(attempts) if attempts.isdigit() else 4}
    config = Config(retries=retries, connect_timeout=10, read_timeout=120)
    return boto3.session.Session().client("s3", config=config)


def _endpoint(client) -> str:  # type: ignore[no-untyped-def]
    parts = urlsplit(str(client.meta.endpoint_url))
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _s3_error(uri: str, exc: Exception, client) -> Exception:  # type: ignore[no-untyped-def]
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return AuthError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if isinstance(exc, EndpointConnectionError):
        return ServerUnavailableError(f"{uri}: S3 endpoint {_endpoint(client)} is unreachable")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            return DatasetNotFoundError(f"{uri}: no such S3 object or prefix")
        if code == "NoSuchBucket":
            return DatasetNotFoundError(f"{uri}: S3 bucket does not exist")
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}:
            return AuthError(f"{uri}: S3 access denied ({code}); check the credentials and bucket policy")
        return DataError(f"{uri}: S3 request failed ({code})")
    if isinstance(exc, BotoCoreError):
        return ServerUnavailableError(f"{uri}: S3 request to {_endpoint(client)} failed ({type(exc).__name__})")
    return exc


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key.

    Raises:
        DataError: The URI has no bucket.

    """
    parts = urlsplit(uri)
    if not parts.netloc:
        raise DataError(f"{uri}: expected s3://bucket/key or s3://bucket/prefix/")
    return parts.netloc, parts.path.lstrip("/")


def download_s3(uri: str, workdir: Path, accept: Callable[[str], bool] | None = None) -> tuple[list[str], str]:
    """Download an S3 object, or every accepted object under a prefix, into ``workdir`` (keys relative to it).

    Args:
        uri: ``s3://bucket/key`` or ``s3://bucket/prefix/``.
        workdir: Local folder; object keys are laid out below it relative to the prefix.
        accept: Which keys under a prefix to download (default: data files of a known format).

    Returns:
        (downloaded keys, the prefix they are relative to).

    Raises:
        DatasetNotFoundError: No object or prefix at the URI.
        DataError: Nothing accepted under the prefix, or a key escaping the prefix.
        AuthError: S3 credentials are missing or rejected.

    """
    from botocore.exceptions import BotoCoreError, ClientError

    accept = accept or _known_format
    bucket, key = parse_s3_uri(uri)
    client = _s3_client()
    try:
        keys: list[str] = []
        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                keys = [key]
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in {"404", "NoSuchKey", "NotFound"}:
                    raise
        if keys:
            if not accept(key):
                detect_format(Path(key), uri)  # names the unknown format before downloading it
            root_key = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        else:
            root_key = f"{key.rstrip('/')}/" if key else ""
            listed: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root_key):
                listed.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
            if not listed:
                raise DatasetNotFoundError(f"{uri}: no such S3 object or prefix")
            keys = [k for k in listed if not _is_hidden(Path(k[len(root_key):]), Path())]
            keys = [k for k in keys if accept(k)]
            if not keys:
                found = ", ".join(k[len(root_key):] for k in listed[:5])
                raise DataError(f"{uri}: prefix holds no data files (found only: {found}); expected {SUPPORTED}")
        logger.info("Downloading %d object(s) from s3://%s/%s via %s", len(keys), bucket, key, _endpoint(client))
        root = workdir.resolve()
        for object_key in keys:
            local = (root / object_key[len(root_key):]).resolve()
            if root not in local.parents:  # a key such as "a/../../x" must not escape the download folder
                raise DataError(f"s3://{bucket}/{object_key}: object key escapes the prefix; refusing to download")
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, object_key, str(local))
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(uri, exc, client) from None
    return keys, root_key


def _s3_files(uri: str, workdir: Path) -> list[SourceFile]:
    bucket, key = parse_s3_uri(uri)
    keys, root_key = download_s3(uri, workdir)
    if len(keys) == 1 and keys[0] == key:
        local = workdir / key[len(root_key):]
        return [SourceFile(local, uri, detect_format(local, uri))]
    return files_in_directory(workdir, f"s3://{bucket}/{root_key}")


def _known_format(name: str) -> bool:
    try:
        detect_format(Path(name))
    except DataError:
        logger.warning("Ignoring %s: unknown format", name)
        return False
    return True


@contextlib.contextmanager
def open_source(uri: str) -> Iterator[list[SourceFile]]:
    """Resolve a dataset URI to local files; downloads (S3) live in a temporary directory until exit.

    Raises:
        DatasetNotFoundError: Nothing exists at the URI.
        DataError: Unknown format, mixed formats, or a non-classification built-in.
        AuthError: S3 credentials are missing or rejected.

    """
    if uri.startswith("builtin:"):
        yield _builtin_files(uri)
    elif uri.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="transferkit-s3-") as tmp:
            yield _s3_files(uri, Path(tmp))
    elif "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{uri}: unsupported URI scheme; expected a local path, s3://bucket/key or builtin:NAME")
    else:
        yield _local_files(uri)


# ---------------------------------------------------------------------------------------------------
# Reading


def _check_encoding(source: SourceFile) -> None:
    """Reject UTF-16/32 and non-UTF-8 text early, naming the line (pyarrow only says 'Invalid UTF8')."""
    try:
        with pa.input_stream(str(source.path), compression="detect") as stream:
            head = stream.read(_SNIFF_BYTES)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{source.display}: cannot read file ({exc})") from None
    if not head:
        raise DataError(f"{source.display}: empty file; expected a header row and data rows"
                        if source.format in {"csv", "tsv"} else f"{source.display}: empty file; expected data rows")
    boms = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32", codecs.BOM_UTF16_LE: "UTF-16",
            codecs.BOM_UTF16_BE: "UTF-16"}
    for bom, name in boms.items():
        if head.startswith(bom):
            raise DataError(f"{source.display}: text is encoded as {name}; expected UTF-8 (re-encode the file)")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=False)
    except UnicodeDecodeError as exc:
        line = head[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source.display}: line {line}: byte 0x{head[exc.start]:02x} is not valid UTF-8; "
            "expected UTF-8 text (re-encode the file, e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if b"\x00" in head:
        raise DataError(f"{source.display}: contains NUL bytes (binary or UTF-16 data); expected UTF-8 text")


def _missing_columns(source: SourceFile, present: list[str], needed: dict[str, str]) -> None:
    missing = [column for column in needed.values() if column not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        shown = ", ".join(present[:40]) + (", ..." if len(present) > 40 else "")
        raise SchemaError(f"{source.display}: missing column(s) {names}; columns present: {shown or '(none)'}")


def _csv_parse_options(source: SourceFile, handler=None) -> pacsv.ParseOptions:  # type: ignore[no-untyped-def]
    delimiter = "\t" if source.format == "tsv" else ","
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=handler)


def _csv_parse_error(source: SourceFile, exc: Exception) -> DataError:
    """Re-read single-threaded to learn the row number of a malformed row (error path only)."""
    rows: list = []

    def remember(row):  # type: ignore[no-untyped-def]
        rows.append(row)
        return "error"

    with contextlib.suppress(Exception), contextlib.closing(
            pacsv.open_csv(str(source.path), read_options=pacsv.ReadOptions(use_threads=False),
                           parse_options=_csv_parse_options(source, remember))) as reader:
        for _ in reader:
            pass
    if rows:
        row = rows[0]
        where = f"row {row.number - 1}" if row.number else "a row"
        text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
        return DataError(f"{source.display}: {where}: expected {row.expected_columns} fields, "
                         f"found {row.actual_columns} ({text!r}); check quoting and the delimiter")
    return DataError(f"{source.display}: malformed {source.format.upper()} ({_short(exc)})")


def _short(exc: Exception, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _iter_csv(source: SourceFile, needed: dict[str, str]) -> Iterator[pa.RecordBatch]:
    _check_encoding(source)
    path = str(source.path)
    # Streaming readers parse ahead on a background thread: close them on every path and read without threads, or
    # a reader stopped by an error aborts the interpreter at exit ("terminate called without an active exception").
    try:
        sniff = pacsv.ReadOptions(block_size=_SNIFF_BYTES, use_threads=False)
        with contextlib.closing(pacsv.open_csv(path, read_options=sniff,
                                               parse_options=_csv_parse_options(source))) as header:
            present = header.schema.names
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{source.display}: empty file; expected a header row and data rows") from None
        raise _csv_parse_error(source, exc) from None
    _missing_columns(source, present, needed)
    columns = list(dict.fromkeys(needed.values()))
    # Binary first, then an explicit cast: the cast locates invalid UTF-8 per row (see validate.py), and
    # no type inference can turn a numeric-looking label or text into numbers.
    convert = pacsv.ConvertOptions(include_columns=columns, column_types=dict.fromkeys(columns, pa.binary()))
    try:
        # use_threads=False: a threaded reader stopped by a parse error still aborted the process at exit in
        # 1 of 10 runs even when closed (pyarrow 23); parsing is a small part of data prep's time.
        read_options = pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE, use_threads=False)
        with contextlib.closing(pacsv.open_csv(path, read_options=read_options,
                                               parse_options=_csv_parse_options(source),
                                               convert_options=convert)) as reader:
            yield from reader
    except pa.ArrowInvalid as exc:
        raise _csv_parse_error(source, exc) from None


def _json_type_error(source: SourceFile, needed: dict[str, str], exc: Exception) -> DataError:
    """Find the first offending line with the json module (error path only: pyarrow's row is per block)."""
    types: dict[str, type] = {}
    with contextlib.suppress(OSError, EOFError), _open_text(source.path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                return DataError(f"{source.display}: line {number}: invalid JSON ({err.msg}); "
                                 "expected one object per line")
            if not isinstance(record, dict):
                return DataError(f"{source.display}: line {number}: expected a JSON object per line, "
                                 f"got {type(record).__name__}")
            for column in needed.values():
                value = record.get(column)
                if value is None:
                    continue
                kind = str if isinstance(value, str) else type(value)
                if column in types and types[column] is not kind:
                    return SchemaError(f"{source.display}: line {number}: column {column!r} holds "
                                       f"{type(value).__name__} {_preview(value)} but earlier rows hold "
                                       f"{types[column].__name__}; expected one type per column")
                types.setdefault(column, kind)
    return DataError(f"{source.display}: invalid JSON Lines ({_short(exc)})")


def _open_text(path: Path):  # type: ignore[no-untyped-def]
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _iter_jsonl(source: SourceFile, needed: dict[str, str]) -> Iterator[pa.RecordBatch]:
    _check_encoding(source)
    path = str(source.path)
    read_options = pajson.ReadOptions(block_size=CSV_BLOCK_SIZE)
    try:
        reader = pajson.open_json(path, read_options=read_options)
        schema = reader.schema
    except pa.ArrowInvalid as exc:
        raise _json_type_error(source, needed, exc) from None
    _missing_columns(source, schema.names, needed)
    columns = list(dict.fromkeys(needed.values()))
    explicit = pa.schema([schema.field(c) for c in columns])
    options = pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="ignore")
    try:
        reader = pajson.open_json(path, read_options=read_options, parse_options=options)
        yield from reader
    except pa.ArrowInvalid as exc:
        raise _json_type_error(source, needed, exc) from None


def _iter_parquet(source: SourceFile, needed: dict[str, str]) -> Iterator[pa.RecordBatch]:
    try:
        if source.path.stat().st_size == 0:
            raise DataError(f"{source.display}: empty file; expected a Parquet file")
        parquet = pq.ParquetFile(str(source.path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source.display}: not a readable Parquet file ({_short(exc)})") from None
    _missing_columns(source, parquet.schema_arrow.names, needed)
    columns = list(dict.fromkeys(needed.values()))
    try:
        yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source.display}: corrupt Parquet data ({_short(exc)})") from None


def iter_batches(source: SourceFile, needed: dict[str, str]) -> Iterator[pa.RecordBatch]:
    """Stream record batches of the ``needed`` columns (role -> source column) of one file.

    Batches keep the source column names; CSV/TSV columns arrive as binary (see ``validate``).

    Raises:
        SchemaError: A needed column is missing (the message lists the columns present).
        DataError: Empty, malformed or non-UTF-8 file.

    """
    readers = {"csv": _iter_csv, "tsv": _iter_csv, "jsonl": _iter_jsonl, "parquet": _iter_parquet}
    try:
        yield from readers[source.format](source, needed)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"{source.display}: cannot read file ({reason})") from None


def source_size(files: list[SourceFile]) -> int:
    """Total size in bytes of the files (for logs)."""
    return sum(os.path.getsize(f.path) for f in files)

