"""Data prep from S3 against a real moto S3 server on loopback (the accepted stand-in for S3)."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.data.builtin import load_builtin
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import SPLITS, load_prepared
from transferkit.errors import AuthError, DataError, DatasetNotFoundError, SchemaError, ServerUnavailableError

pytestmark = pytest.mark.integration

SECRET = "tk-secret-" + uuid.uuid4().hex  # must never appear in logs or messages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATRANSFERKITTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    client = boto3.client("s3")
    name = f"tk-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture(scope="module")
def movies_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = load_builtin("builtin:movie-sentiment").select(["text", "label"])
    table = table.take(np.random.default_rng(1).permutation(table.num_rows)[:400])
    path = tmp_path_factory.mktemp("s3src") / "movies.csv"
    pacsv.write_csv(table, path)
    return path


def test_object_round_trip_matches_the_local_file(bucket, movies_csv: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    client, name = bucket
    client.upload_file(str(movies_csv), name, "raw/movies.csv")
    with caplog.at_level(logging.DEBUG, logger="transferkit"):
        remote = prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/raw/movies.csv", out=tmp_path / "s3"))
    local = prepare_dataset(DataPrepConfig(dataset=str(movies_csv), out=tmp_path / "local"))
    for split in SPLITS:
        assert (tmp_path / "s3" / f"{split}.parquet").read_bytes() == \
            (tmp_path / "local" / f"{split}.parquet").read_bytes()
    assert remote.rows == local.rows and sum(remote.rows.values()) + remote.duplicates_removed == 400
    assert load_prepared(tmp_path / "s3").schema["source"] == f"s3://{name}/raw/movies.csv"
    assert f"s3://{name}/raw/movies.csv" in caplog.text and SECRET not in caplog.text

    # Round trip: publish the prepared split back to S3 and prepare from that object with the user's split.
    train = load_prepared(tmp_path / "s3").table("train").select(["text", "label_name"])
    pacsv.write_csv(train.append_column("fold", pa.array(["train"] * 200 + ["validation"] * 50 + ["test"] * 50
                                                         + ["train"] * (train.num_rows - 300))),
                    tmp_path / "again.csv")
    client.upload_file(str(tmp_path / "again.csv"), name, "prepared/again.csv")
    again = prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/prepared/again.csv", out=tmp_path / "again",
                                           label_column="label_name", split_column="fold"))
    assert again.rows["train"] == train.num_rows - 100


def test_prefix_is_read_as_a_directory_of_parts(bucket, movies_csv: Path, tmp_path: Path) -> None:
    client, name = bucket
    table = pacsv.read_csv(movies_csv)
    for i, start in enumerate((0, 150, 300)):
        pacsv.write_csv(table.slice(start, 150), tmp_path / f"part-{i}.csv")
        client.upload_file(str(tmp_path / f"part-{i}.csv"), name, f"parts/part-{i}.csv")
    client.put_object(Bucket=name, Key="parts/_SUCCESS", Body=b"")
    client.put_object(Bucket=name, Key="parts/notes.txt", Body=b"not data")
    for uri in (f"s3://{name}/parts/", f"s3://{name}/parts"):
        out = tmp_path / uri.rstrip("/").rsplit("/", 1)[-1]
        result = prepare_dataset(DataPrepConfig(dataset=uri, out=out))
        assert result.source_rows == 400
        assert sum(result.rows.values()) + result.duplicates_removed == 400


def test_s3_errors_name_the_uri_and_leave_no_output(bucket, movies_csv: Path, tmp_path: Path) -> None:
    client, name = bucket
    client.put_object(Bucket=name, Key="bad/nolabel.csv", Body=b"id,text\n1,great\n2,awful\n")
    client.put_object(Bucket=name, Key="bad/sheet.xlsx", Body=b"PK not a sheet")
    for junk in ("readme.txt", "sheet.xlsx"):
        client.put_object(Bucket=name, Key=f"junk/{junk}", Body=b"not data")
    cases = [
        (f"s3://{name}/raw/missing.csv", DatasetNotFoundError, f"s3://{name}/raw/missing.csv: no such S3 object"),
        (f"s3://no-such-bucket-{name}/x.csv", DatasetNotFoundError, "S3 bucket does not exist"),
        (f"s3://{name}/bad/sheet.xlsx", DataError, f"s3://{name}/bad/sheet.xlsx: unknown format .xlsx"),
        (f"s3://{name}/junk", DataError, "junk: prefix holds no data files (found only: readme.txt, sheet.xlsx)"),
        (f"s3://{name}/bad/nolabel.csv", SchemaError,
         f"s3://{name}/bad/nolabel.csv: missing column(s) 'label'; columns present: id, text"),
    ]
    for uri, error, message in cases:
        out = tmp_path / "out"
        with pytest.raises(error) as info:
            prepare_dataset(DataPrepConfig(dataset=uri, out=out))
        assert message in str(info.value) and SECRET not in str(info.value)
        assert not out.exists() and list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", f"s3://{name}/raw/missing.csv",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "no such S3 object or prefix" in result.stderr
    assert not (tmp_path / "cli").exists()


def test_unreachable_endpoint_and_missing_credentials(bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    _, name = bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ServerUnavailableError, match=r"S3 endpoint http://127\.0\.0\.1:\d+ is unreachable"):
        prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/raw/movies.csv", out=tmp_path / "out"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AuthError, match="no AWS credentials found"):
        prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/raw/movies.csv", out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real scikit-learn digits as class folders of PNG files (3 classes x 20 images)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    root = tmp_path_factory.mktemp("digit-folders") / "digits"
    for label in (0, 1, 2):
        folder = root / f"digit-{label}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(data.target == label)[:20]):
            pixels = np.rint(data.images[index] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
    return root


def _upload_tree(client, name: str, root: Path, prefix: str) -> None:  # type: ignore[no-untyped-def]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), name, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_image_class_folders_under_an_s3_prefix_match_the_local_folders(bucket, digit_folders, tmp_path):
    client, name = bucket
    _upload_tree(client, name, digit_folders, "images/digits")
    common = {"task": "image-classification", "min_class_count": 5}
    remote = prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/images/digits/", out=tmp_path / "s3", **common))
    local = prepare_dataset(DataPrepConfig(dataset=str(digit_folders), out=tmp_path / "local", **common))
    assert remote.rows == local.rows and sum(remote.rows.values()) == 60
    for split in SPLITS:
        columns = ["image", "label", "label_name"]
        assert load_prepared(tmp_path / "s3").table(split).select(columns).equals(
            load_prepared(tmp_path / "local").table(split).select(columns))
    assert load_prepared(tmp_path / "s3").labels == ["digit-0", "digit-1", "digit-2"]


def test_image_table_with_relative_paths_under_an_s3_prefix(bucket, digit_folders, tmp_path):
    client, name = bucket
    _upload_tree(client, name, digit_folders, "table/files")
    rows = sorted(p.relative_to(digit_folders).as_posix() for p in digit_folders.rglob("*.png"))
    table = pa.table({"path": [f"files/{r}" for r in rows], "y": [r.split("/")[0] for r in rows]})
    csv = tmp_path / "index.csv"
    pacsv.write_csv(table, csv)
    client.upload_file(str(csv), name, "table/index.csv")
    prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/table/", out=tmp_path / "out", task="image-classification",
                                   image_column="path", label_column="y", min_class_count=5))
    prepared = load_prepared(tmp_path / "out")
    assert sum(prepared.table(split).num_rows for split in SPLITS) == 60
    with pytest.raises(DatasetNotFoundError, match=f"s3://{name}/nothing/: no such S3 object or prefix"):
        prepare_dataset(DataPrepConfig(dataset=f"s3://{name}/nothing/", out=tmp_path / "none",
                                       task="image-classification"))
    assert not (tmp_path / "none").exists()
