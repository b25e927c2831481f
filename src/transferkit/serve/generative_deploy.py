"""A generative export as the deploy step serves it: one decoupled python-backend Triton model.

The generative task hands :class:`GenerativeExport` to :func:`transferkit.serve.deploy.deploy_model` (through
:meth:`transferkit.tasks.base.Task.served_export`); it offers what the deploy modes need of any export: the
names of the deployment's models, how to write one version of them, and the smoke test run against the live
server after loading (a short greedy generation on ``generate`` and the same prompt streamed on
``generate_stream``: both must return the same non-empty text).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ServingError
from transferkit.serve.generative import SPEC_FILE, build_generative_repository, generate, read_spec, stream_generate

logger = logging.getLogger(__name__)

SMOKE_TOKENS = 8


@dataclass
class GenerativeSmokeResult:
    """Outcome of the generative smoke test (one greedy generation, whole and streamed, per prompt)."""

    passed: bool
    inputs: int
    max_tokens: int
    texts: list[str] = field(default_factory=list)
    stream_pieces: list[int] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return asdict(self)


@dataclass
class GenerativeExport:
    """A validated generative export directory (``generation_spec.json`` and the variant folders)."""

    directory: Path
    spec: dict[str, Any]
    variant: str
    kind: str = "generative"

    @classmethod
    def load(cls, directory: Path | str, variant: str | None = None) -> GenerativeExport:
        """Validate ``directory`` and pick the served variant (default: the recommended one).

        Raises:
            ServingError: Not a generative export, an unknown variant, or its folder is incomplete.
        """
        directory = Path(directory)
        spec = read_spec(directory)
        chosen = variant or spec["recommended"]
        if chosen not in spec.get("variants", {}):
            raise ServingError(f"{directory / SPEC_FILE}: variant {chosen!r} not among "
                               f"{sorted(spec.get('variants', {}))}")
        folder = directory / spec["variants"][chosen]["dir"]
        for name in ("genai_config.json", "tokenizer.json"):
            if not (folder / name).is_file():
                raise ServingError(f"{folder / name}: missing (listed as variant {chosen!r} in {SPEC_FILE})")
        return cls(directory, spec, chosen)

    @property
    def format_version(self) -> str:
        """What the model registry records as the model format version."""
        return f"genai-{self.variant}"

    def model_names(self, name: str) -> list[str]:
        """One model: the decoupled python-backend generator."""
        return [name]

    def endpoint(self, url: str, name: str) -> str:
        """Where clients send prompts (``generate``; ``generate_stream`` streams)."""
        return f"{url.rstrip('/')}/v2/models/{name}/generate"

    def write_tree(self, name: str, root: Path, version: int, options: Any) -> list[str]:
        """Write version ``version`` of the model into ``root`` (production kind and threads from ``options``)."""
        build_generative_repository(self.directory, root, name, variant=self.variant, version=version,
                                    concurrency=options.generation_concurrency, threads=options.local_threads,
                                    production_kind="KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU")
        return [name]

    def smoke_test(self, url: str, name: str, version: int, prompts: list[str], *,
                   max_tokens: int = SMOKE_TOKENS, timeout: float = 120.0) -> GenerativeSmokeResult:
        """Greedy ``max_tokens`` on ``generate`` and ``generate_stream`` of ``version`` for each prompt.

        Passes when every whole text is non-empty and equals its streamed pieces joined (a greedy decode is
        deterministic). Server errors fail the test with their one-line message.
        """
        started = time.perf_counter()
        result = GenerativeSmokeResult(passed=False, inputs=len(prompts), max_tokens=max_tokens)
        try:
            for prompt in prompts:
                whole = generate(url, name, prompt, version=version, max_tokens=max_tokens, temperature=0.0,
                                 timeout=timeout)
                pieces = list(stream_generate(url, name, prompt, version=version, max_tokens=max_tokens,
                                              temperature=0.0, timeout=timeout))
                streamed = "".join(p.text for p in pieces)
                result.texts.append(whole)
                result.stream_pieces.append(len(pieces))
                if not whole.strip():
                    result.reason = f"prompt {prompt[:40]!r}: the generated text is empty"
                    break
                if streamed.strip() != whole.strip():
                    result.reason = (f"prompt {prompt[:40]!r}: streamed text {streamed[:60]!r} differs from the "
                                     f"whole text {whole[:60]!r}")
                    break
            else:
                result.passed = True
        except (ServingError, OSError) as exc:
            result.reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        result.seconds = round(time.perf_counter() - started, 3)
        logger.info("Generative smoke test of %s version %d: %s", name, version,
                    "passed" if result.passed else f"failed ({result.reason})")
        return result
