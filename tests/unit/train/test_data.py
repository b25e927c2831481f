import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import write_movie_slice
from transferkit.data.prepared import load_prepared
from transferkit.errors import PreparedDataError
from transferkit.models.loading import load_tokenizer
from transferkit.train.data import SeededLengthGroupedSampler, TokenizedDataset, class_weight_vector, read_split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_movie_slice(tmp_path_factory.mktemp("movie"), train=48, validation=16, test=16)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


def _rewrite(directory, split, **columns):
    table = pq.read_table(directory / f"{split}.parquet")
    for name, values in columns.items():
        index = table.column_names.index(name)
        table = table.set_column(index, name, pa.array(values, table.schema.field(name).type))
    pq.write_table(table, directory / f"{split}.parquet")


def test_bad_rows_name_file_and_row(tmp_path):
    directory = write_movie_slice(tmp_path / "d", train=8, validation=4, test=4)
    labels = pq.read_table(directory / "train.parquet").column("label").to_pylist()
    _rewrite(directory, "train", label=[*labels[:3], 5, *labels[4:]])
    with pytest.raises(PreparedDataError, match=r"train.parquet: row 3: label 5 is not an id in labels.json \(0..1\)"):
        read_split(load_prepared(directory), "train")
    names = pq.read_table(directory / "validation.parquet").column("label_name").to_pylist()
    ids = pq.read_table(directory / "validation.parquet").column("label").to_pylist()
    wrong = ["positive" if n == "negative" else "negative" for n in names]
    _rewrite(directory, "validation", label_name=wrong)
    with pytest.raises(PreparedDataError, match=r"validation.parquet: row 0: label_name .* disagrees with labels.json"):
        read_split(load_prepared(directory), "validation")
    assert ids  # the ids themselves were valid


def test_empty_training_split_is_refused(tmp_path):
    directory = write_movie_slice(tmp_path / "d", train=0, validation=4, test=4)
    with pytest.raises(PreparedDataError, match="train.parquet: split 'train' is empty"):
        read_split(load_prepared(directory), "train")


def test_examples_are_tokenised_once_without_padding(prepared, tokenizer):
    split = read_split(load_prepared(prepared), "train")
    dataset = TokenizedDataset(split, tokenizer, max_length=32)
    assert len(dataset) == 48
    assert max(dataset.lengths) <= 32 and min(dataset.lengths) < max(dataset.lengths)
    item = dataset[0]
    assert len(item["input_ids"]) == dataset.lengths[0] and item["labels"] == split.labels[0]


@pytest.mark.parametrize("augment", ["word_dropout", "token_mask"])
def test_augmentation_depends_only_on_seed_epoch_and_index(prepared, tokenizer, augment):
    split = read_split(load_prepared(prepared), "train")
    first = TokenizedDataset(split, tokenizer, 32, augment=augment, augment_prob=0.3, seed=7)
    second = TokenizedDataset(split, tokenizer, 32, augment=augment, augment_prob=0.3, seed=7)
    plain = TokenizedDataset(split, tokenizer, 32)
    second.set_epoch(1)
    second.set_epoch(0)
    for i in range(len(first)):
        assert first[i] == second[i]
    changed = sum(first[i]["input_ids"] != plain[i]["input_ids"] for i in range(len(first)))
    assert changed > len(first) // 2
    first.set_epoch(1)
    assert any(first[i]["input_ids"] != second[i]["input_ids"] for i in range(len(first)))
    if augment == "token_mask":
        masked = [t for i in range(len(second)) for t in second[i]["input_ids"]]
        assert tokenizer.mask_token_id in masked
        assert all(second[i]["input_ids"][0] == tokenizer.cls_token_id for i in range(len(second)))


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = [(i * 37) % 50 + 3 for i in range(200)]
    a, b = SeededLengthGroupedSampler(lengths, 8, seed=3), SeededLengthGroupedSampler(lengths, 8, seed=3)
    b.set_epoch(2)
    b.set_epoch(0)
    order = list(a)
    assert order == list(b) and sorted(order) == list(range(200))
    a.set_epoch(1)
    assert list(a) != order
    batches = [order[i : i + 8] for i in range(0, 200, 8)]
    spread = sum(max(lengths[j] for j in batch) - min(lengths[j] for j in batch) for batch in batches) / len(batches)
    assert spread < 10  # batches hold similar lengths (random batches would spread ~40)


def test_class_weights():
    assert class_weight_vector("none", [0, 1, 1], 2) is None
    assert class_weight_vector("balanced", [0, 1, 1, 1], 2) == pytest.approx([2.0, 2 / 3])
    assert class_weight_vector("balanced", [0, 0], 3) == [1.0, 1.0, 1.0]
    with pytest.raises(PreparedDataError, match="class_weights: got 3 weights for 2 labels"):
        class_weight_vector([1.0, 2.0, 3.0], [0, 1], 2)
    json.dumps(class_weight_vector([1.0, 2.0], [0, 1], 2))
