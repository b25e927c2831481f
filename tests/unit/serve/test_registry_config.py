"""Model Registry options: URL, token sources and KEY=VALUE metadata fail with one line naming the option."""

import re

import pytest

from transferkit.errors import ConfigError
from transferkit.serve.registry import RegistryConfig, parse_metadata


@pytest.mark.parametrize(("url", "message"), [
    ("registry:8080", "registry_url: expected http(s)://host[:port]"),
    ("ftp://host", "registry_url: expected http(s)://host[:port]"),
    ("http://host:99999", "registry_url: port must be 1-65535"),
    ("http://host:8080/api/model_registry", "registry_url: give the service root without a path"),
])
def test_bad_registry_urls(url, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RegistryConfig(url=url)


def test_token_comes_from_the_secret_file_before_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TK_REG_TOKEN", "from-env")
    assert RegistryConfig(url="http://r:8080", token_env="TK_REG_TOKEN").token() == "from-env"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert RegistryConfig(url="https://r", token_env="TK_REG_TOKEN", token_file=str(secret)).token() == "from-file"
    secret.write_text("")
    with pytest.raises(ConfigError, match="registry_token_file: .* is empty"):
        RegistryConfig(url="https://r", token_file=str(secret)).token()
    with pytest.raises(ConfigError, match="registry_token_file: cannot read"):
        RegistryConfig(url="https://r", token_file=str(tmp_path / "missing")).token()


def test_metadata_values_are_typed():
    assert parse_metadata(["kfp_run_id=abc-1", "retention=0.52", "epochs=3", "gated=true", "uri=s3://b/k=v"]) == {
        "kfp_run_id": "abc-1", "retention": 0.52, "epochs": 3, "gated": True, "uri": "s3://b/k=v"}
    with pytest.raises(ConfigError, match="registry_metadata: expected KEY=VALUE, got 'oops'"):
        parse_metadata(["oops"])
