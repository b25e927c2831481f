"""Long documents: auto max_length, head/tail/head_tail truncation, chunk windows and aggregation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from transferkit.data.long_text import (
    TextInputs,
    aggregate,
    auto_max_length,
    cut,
    encode_documents,
    kept_fractions,
    parse_max_length,
    window_starts,
)
from transferkit.errors import ConfigError
from transferkit.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


def test_auto_max_length_is_p95_rounded_up_to_8_and_capped():
    lengths = list(range(1, 101))  # p95 = 95.05 -> 96
    assert auto_max_length(lengths, 512) == 96
    assert auto_max_length([1000] * 10, 512) == 512
    assert auto_max_length([3, 4, 5], 512) == 16  # floor: room for text beyond the special tokens
    assert auto_max_length([97] * 20, 512) == 104


def test_parse_max_length():
    assert parse_max_length("auto") == "auto"
    assert parse_max_length("AUTO") == "auto"
    assert parse_max_length("256") == 256
    assert parse_max_length(64) == 64
    assert parse_max_length(None) is None
    with pytest.raises(ConfigError, match=r"^max_length: expected a number of tokens or 'auto', got 'long'$"):
        parse_max_length("long")
    with pytest.raises(ConfigError, match="positive"):
        parse_max_length("0")


def test_cut_keeps_head_tail_or_both():
    content = list(range(100))
    assert cut(content, 8, "head") == list(range(8))
    assert cut(content, 8, "tail") == list(range(92, 100))
    assert cut(content, 8, "head_tail") == [0, 1, 94, 95, 96, 97, 98, 99]  # a quarter from the start
    assert cut([1, 2, 3], 8, "head_tail") == [1, 2, 3]


def test_windows_cover_the_document_with_the_overlap():
    assert window_starts(5, 8, 2) == [0]
    assert window_starts(8, 8, 2) == [0]
    assert window_starts(20, 8, 2) == [0, 6, 12]  # the last window [12, 20) reaches the end
    starts = window_starts(1000, 30, 10)
    assert starts[-1] + 30 >= 1000 and starts[-2] + 30 < 1000
    assert all(b - a == 20 for a, b in itertools.pairwise(starts))


def test_bad_combinations_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^stride: 30 overlapping tokens must be below the window of 30 text "
                                          r"tokens \(max_length 32 minus 2 special tokens\)$"):
        TextInputs(32, long_documents="chunk", stride=30).check()
    with pytest.raises(ConfigError, match=r"^max_length: 2 leaves no room for text after the tokenizer's 2 special "
                                          r"tokens; expected more than 2$"):
        TextInputs(2).check()
    with pytest.raises(ConfigError, match="^truncation: expected one of head, tail, head_tail, got 'middle'$"):
        TextInputs(32, truncation="middle").check()


def test_encoding_matches_the_tokenizer_for_head_and_keeps_special_tokens(tokenizer):
    texts = ["word " * 300, "a short one"]
    head, index = encode_documents(tokenizer, texts, TextInputs(32, "head"))
    reference = tokenizer(texts, truncation=True, max_length=32)
    assert [f["input_ids"] for f in head] == reference["input_ids"]
    assert list(index) == [0, 1]
    text = " ".join(f"w{i}" for i in range(200))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tail, _ = encode_documents(tokenizer, [text], TextInputs(32, "tail"))
    assert tail[0]["input_ids"] == [tokenizer.cls_token_id, *ids[-30:], tokenizer.sep_token_id]
    both, _ = encode_documents(tokenizer, [text], TextInputs(32, "head_tail"))
    assert both[0]["input_ids"][1:9] == ids[:8] and both[0]["input_ids"][9:-1] == ids[-22:]
    assert set(both[0]) == {"input_ids", "attention_mask", "token_type_ids"}


def test_chunk_windows_carry_every_token_and_their_document(tokenizer):
    text = " ".join(f"w{i}" for i in range(200))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    spec = TextInputs(32, long_documents="chunk", stride=10).check()
    features, index = encode_documents(tokenizer, ["short text", text], spec)
    assert index[0] == 0 and set(index[1:].tolist()) == {1}
    windows = [f["input_ids"][1:-1] for f in features[1:]]
    assert all(len(f["input_ids"]) <= 32 for f in features)
    assert windows[0] == ids[:30] and windows[1][:10] == ids[20:30]
    seen = {t for w in windows for t in w}
    assert seen == set(ids) and windows[-1][-1] == ids[-1]


def test_aggregate_mean_and_max_per_document():
    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.0, 5.0]])
    index = np.array([0, 0, 1])
    np.testing.assert_allclose(aggregate(logits, index, 2, "mean"), [[2.0, -1.0], [0.0, 5.0]])
    np.testing.assert_allclose(aggregate(logits, index, 2, "max"), [[3.0, 0.0], [0.0, 5.0]])


def test_kept_fractions():
    fractions = kept_fractions([10, 100], 20)
    assert fractions["head"] == pytest.approx((1.0 + 0.2) / 2)
    assert fractions["chunk"] == 1.0


def test_data_prep_max_length_auto_zero_and_tasks_without_auto(tmp_path):
    from transferkit.data.prepare import AUTO_FALLBACK_MAX_LENGTH, DataPrepConfig

    assert DataPrepConfig(dataset="x.csv", out=tmp_path / "o").max_length == "auto"
    assert DataPrepConfig(dataset="x.csv", out=tmp_path / "o", max_length=0).max_length == "auto"  # KFP unset
    assert DataPrepConfig(dataset="x.csv", out=tmp_path / "o", max_length="96").max_length == 96
    generative = DataPrepConfig(dataset="x.csv", out=tmp_path / "o", task="summarization")
    assert generative.max_length == AUTO_FALLBACK_MAX_LENGTH == 64
    with pytest.raises(ConfigError, match="^max_length: expected a number of tokens or 'auto', got 'many'$"):
        DataPrepConfig(dataset="x.csv", out=tmp_path / "o", max_length="many")
