"""One sample request to a deployed model, as the end of a local pipeline run shows it.

The task registry decides what to ask (:meth:`transferkit.tasks.base.Task.sample_request`): a classifier gets a
raw sentence or the first test image of the prepared data on the ensemble's ``infer`` and answers with a label
and probabilities; a generative model gets the user message of the first test pair of the prepared data on
``generate_stream`` (greedy, the export's saved ``max_new_tokens``) and streams its text, recorded with the
token count and the time to first token.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transferkit.errors import PreparedDataError, ServingError

logger = logging.getLogger(__name__)

# Tokens of a source kept in hand when it is cut at a token boundary (re-tokenizing the cut text can differ).
_CUT_MARGIN = 2


def classify(http_url: str, model_name: str, *, text: str | None = None, image: bytes | None = None) -> dict[str, Any]:
    """Send one raw sentence or one encoded image to a deployed classifier; return its label and probabilities."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    name, payload = ("text", text.encode("utf-8")) if text is not None else ("image", image)
    batch = np.empty((1, 1), dtype=object)
    batch[0, 0] = payload
    request = httpclient.InferInput(name, list(batch.shape), "BYTES")
    request.set_data_from_numpy(batch)
    response = client.infer(model_name, [request])
    label = response.as_numpy("label").reshape(-1)[0]
    return {
        "input": text if text is not None else f"PNG image ({len(payload)} bytes)",
        "label": label.decode() if isinstance(label, bytes) else str(label),
        "probabilities": [round(float(v), 4) for v in response.as_numpy("probabilities").reshape(-1)],
    }


def first_test_row(dataset_dir: Path | str | None, columns: list[str]) -> dict[str, Any]:
    """``columns`` of the first row of the prepared dataset's test split.

    Raises:
        PreparedDataError: No dataset, no test split, a missing column or an empty split.
    """
    import pyarrow.parquet as pq

    if not dataset_dir:
        raise PreparedDataError("the run has no prepared dataset to take a sample from")
    path = Path(dataset_dir) / "test.parquet"
    try:
        table = pq.read_table(path, columns=columns).slice(0, 1)
    except (OSError, KeyError, ValueError) as exc:
        raise PreparedDataError(f"{path}: cannot read columns {columns} ({str(exc).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise PreparedDataError(f"{path}: the test split is empty; no sample to send")
    return {name: table.column(name)[0].as_py() for name in columns}


def first_test_image(dataset_dir: Path | str | None, work_dir: Path) -> tuple[bytes, str, Path]:
    """The first test image of a prepared image dataset: (PNG bytes, true label, a copy saved as ``sample.png``)."""
    row = first_test_row(dataset_dir, ["image", "label_name"])
    path = Path(work_dir) / "sample.png"
    path.write_bytes(row["image"])
    return row["image"], str(row["label_name"]), path


def _fit_message(export_dir: Path, spec: dict[str, Any], instruction: str | None, source: str,
                 max_tokens: int) -> tuple[str, int, int]:
    """The user message of a pair with its source cut (at the end) so the served prompt fits.

    The served model wraps the message in the export's prompt format and refuses prompts that overflow the
    context; the budget is the one evaluation uses (the trained length minus ``max_tokens``, at least half of
    it), capped by the context.

    Returns:
        (message, prompt tokens, source tokens cut).
    """
    from tokenizers import Tokenizer

    from transferkit.data.prompts import user_message

    folder = export_dir / spec["variants"][spec["recommended"]]["dir"]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # count the prompt's own tokens (a saved tokenizer may pad or cut to a fixed length)
    tokenizer.no_truncation()
    fmt = spec["prompt"]
    trained = int(spec.get("seq_len_trained") or spec["context_length"])
    budget = min(max(trained - max_tokens, trained // 2), int(spec["context_length"]) - max_tokens)

    def prompt_length(text: str) -> int:
        ids = tokenizer.encode(fmt["prefix"] + user_message(instruction, text) + fmt["suffix"],
                               add_special_tokens=bool(fmt["add_special_tokens"])).ids
        drop = fmt.get("drop_trailing_id")
        return len(ids) - (1 if ids and drop is not None and ids[-1] == drop else 0)

    encoding = tokenizer.encode(source, add_special_tokens=False)
    kept, length, text = len(encoding.ids), prompt_length(source), source
    while length > budget and kept > 1:
        kept = max(kept - (length - budget) - _CUT_MARGIN, 1)
        text = source[: encoding.offsets[kept - 1][1]]
        length = prompt_length(text)
    if length > budget:
        raise ServingError(f"{export_dir}: the sample prompt needs {length} tokens without its source; the "
                           f"budget is {budget} (max_tokens {max_tokens})")
    return user_message(instruction, text), length, len(encoding.ids) - kept


def stream_first_pair(http_url: str, model_name: str, dataset_dir: Path | str | None, export_dir: Path | str,
                      *, max_tokens: int | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Stream the answer of a deployed generative model to the first test pair of the prepared data.

    The request is the pair's user message (instruction, blank line, source: the pipeline's own prompt, which
    the server wraps in the chat template), greedy, ``max_tokens`` new tokens (default: the export's saved
    ``max_new_tokens``).

    Returns:
        ``endpoint`` (``generate_stream``), ``input`` (the message sent), ``reference``, ``generated``,
        ``tokens`` (streamed pieces: one per token that added text), ``ttft_ms``, ``seconds``, ``prompt_tokens``,
        ``source_tokens_cut``.

    Raises:
        PreparedDataError: The prepared data has no test pair.
        ServingError: Not a generative export, or the server refused the request or sent nothing.
    """
    from transferkit.serve.generative import read_spec, stream_generate

    export_dir = Path(export_dir)
    spec = read_spec(export_dir)
    row = first_test_row(dataset_dir, ["source", "instruction", "target"])
    max_tokens = int(max_tokens or spec["max_new_tokens"])
    message, prompt_tokens, cut = _fit_message(export_dir, spec, row["instruction"], str(row["source"]), max_tokens)
    started = time.perf_counter()
    pieces = list(stream_generate(http_url, model_name, message, max_tokens=max_tokens, temperature=0.0,
                                  timeout=timeout))
    seconds = time.perf_counter() - started
    generated = "".join(p.text for p in pieces).strip()
    if not generated:
        raise ServingError(f"{model_name}: streamed no text for the first test pair of {dataset_dir}")
    logger.info("Streamed %d tokens from %s (first after %.0f ms)", len(pieces), model_name, pieces[0].at * 1000)
    return {"endpoint": f"{http_url.rstrip('/')}/v2/models/{model_name}/generate_stream", "input": message,
            "reference": str(row["target"]), "generated": generated, "tokens": len(pieces),
            "ttft_ms": round(pieces[0].at * 1000, 1), "seconds": round(seconds, 3), "prompt_tokens": prompt_tokens,
            "source_tokens_cut": cut}
