import pytest

from transferkit.data.builtin import get_builtin, load_builtin
from transferkit.errors import DatasetNotFoundError


def test_movie_sentiment_has_all_rated_sentences_with_two_labels():
    table = load_builtin("builtin:movie-sentiment")
    assert 10_500 <= table.num_rows <= 10_605
    assert set(table.column("label").to_pylist()) == {"negative", "positive"}
    ratings = table.column("rating").to_pylist()
    assert all(r != 0 for r in ratings)
    labels = table.column("label").to_pylist()
    assert all((r > 0) == (lbl == "positive") for r, lbl in zip(ratings, labels, strict=True))


def test_lee_similarity_has_50_documents_and_1225_pairs():
    table = load_builtin("builtin:lee-similarity")
    assert table.num_rows == 1225
    docs = set(table.column("doc_a").to_pylist()) | set(table.column("doc_b").to_pylist())
    assert docs == set(range(50))
    scores = table.column("score").to_pylist()
    assert min(scores) >= 0.0 and max(scores) <= 1.0


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(DatasetNotFoundError, match="builtin:movie-sentiment"):
        get_builtin("builtin:imdb")
