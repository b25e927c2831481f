"""Install a local Triton Inference Server from the ``nvidia-pytriton`` wheel (no Docker, no GPU).

The registry package ``nvidia-pytriton`` bundles a real ``tritonserver`` binary (Triton 2.51.0) with
the python backend only. We use nothing of PyTriton but that binary: the wheel is fetched without its
dependencies, the server folder is extracted into the cache, the python-backend stub for CPython 3.11
is placed next to the backend, and a separate *serving venv* is created for the python-backend models.

The serving venv must have ``numpy<2``: the 2.51 stub is built against the numpy 1.x ABI and, with
numpy 2, passes wrong input data silently (outputs come back empty). Everything is cached under
``$TRANSFERKIT_CACHE/triton/<key>`` and guarded by a lock, so the step is idempotent and safe to run
from parallel processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transferkit.assets import cache_dir, cache_lock, fetch_distribution
from transferkit.errors import AssetError, ServingError

logger = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
TRITON_SERVER_VERSION = "2.51.0"
STUB_PYTHON = "3.11"
# onnxruntime 1.32.0 declares numpy>=1.21.6, so it runs on the numpy 1.26 the stub needs. Pillow decodes
# images in the ``<name>_preprocess`` model of image classifiers; it is pinned to the version of the main
# environment so that the served preprocessing is pixel-identical to ``ImagePreprocessor``.
# onnxruntime-genai runs the generation loop of generative models (``generate_model.py``).
SERVING_REQUIREMENTS = ("numpy==1.26.4", "onnxruntime==1.32.0", "tokenizers==0.23.3", "Pillow==13.0.0",
                        "onnxruntime-genai==0.18.0")
_SERVING_PROBE = ("import numpy, onnxruntime, tokenizers, PIL, onnxruntime_genai; "
                  "assert numpy.__version__.startswith('1.'), numpy.__version__")
# The stub links the system libpython3.11 (Debian package ``libpython3.11``); a venv built from the
# same interpreter keeps the stdlib and the shared library at one patch level.
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
_STAMP = ".transferkit-complete.json"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of an installed local Triton server and its serving venv."""

    root: Path

    @property
    def server_dir(self) -> Path:
        """Folder with ``bin/``, ``backends/`` and ``caches/``."""
        return self.root / "server"

    @property
    def tritonserver(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backends_dir(self) -> Path:
        """Value for ``--backend-directory``."""
        return self.server_dir / "backends"

    @property
    def cache_dir(self) -> Path:
        """Value for ``--cache-directory``."""
        return self.server_dir / "caches"

    @property
    def libs_dir(self) -> Path:
        """Shared libraries vendored by the wheel (goes on ``LD_LIBRARY_PATH``)."""
        return self.root / "nvidia_pytriton.libs"

    @property
    def venv_dir(self) -> Path:
        """The numpy<2 serving venv used by python-backend models."""
        return self.root / "serving-venv"

    @property
    def venv_python(self) -> Path:
        """Interpreter of the serving venv."""
        return self.venv_dir / "bin" / "python"

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Process environment for ``tritonserver``.

        The stub ignores ``PYTHONPATH`` and finds its packages through the first ``python3`` on
        ``PATH``, so the serving venv's ``bin`` goes first.
        """
        env = dict(os.environ if base is None else base)
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env["PATH"] = os.pathsep.join([str(self.venv_dir / "bin"), env.get("PATH", "/usr/bin:/bin")])
        libs = [str(self.libs_dir)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["VIRTUAL_ENV"] = str(self.venv_dir)
        # Keep tokenizers/onnxruntime from oversubscribing the cores (threads are set per model).
        env.setdefault("OMP_NUM_THREADS", "1")
        env["TOKENIZERS_PARALLELISM"] = "false"
        return env

    def is_complete(self) -> bool:
        """True when a previous install finished (stamp present and executables in place)."""
        stamp = self.root / _STAMP
        if not (stamp.is_file() and self.tritonserver.is_file() and self.venv_python.exists()):
            return False
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        return recorded == _stamp_payload()

    def server_is_current(self) -> bool:
        """True when the server part is installed at the expected version (the venv may be outdated)."""
        try:
            recorded = json.loads((self.root / _STAMP).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        expected = _stamp_payload()
        return (isinstance(recorded, dict) and self.tritonserver.is_file() and self.venv_python.exists()
                and all(recorded.get(k) == expected[k] for k in ("requirement", "server")))


def _stamp_payload() -> dict[str, object]:
    return {"requirement": PYTRITON_REQUIREMENT, "server": TRITON_SERVER_VERSION,
            "serving_requirements": list(SERVING_REQUIREMENTS)}


def _install_key() -> str:
    return f"{PYTRITON_REQUIREMENT.replace('==', '-')}-py{STUB_PYTHON}"


def default_install() -> TritonInstall:
    """The install location under the cache (``$TRANSFERKIT_TRITON_HOME`` overrides it)."""
    override = os.environ.get("TRANSFERKIT_TRITON_HOME")
    if override:
        return TritonInstall(Path(override).expanduser().absolute())
    return TritonInstall(cache_dir() / "triton" / _install_key())


def find_triton() -> TritonInstall:
    """Return the installed local Triton.

    Raises:
        ServingError: It has not been installed (``make setup`` installs it).
    """
    install = default_install()
    if not install.is_complete():
        raise ServingError(
            f"{install.root}: local Triton is not installed; run `make setup` "
            "(or `python -m transferkit.setup_assets`)"
        )
    return install


def _extract_server(wheel: Path, dest: Path) -> None:
    stub_member = f"pytriton/tritonserver/python_backend_stubs/{STUB_PYTHON}/triton_python_backend_stub"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if stub_member not in names:
            raise AssetError(f"{wheel.name}: no python backend stub for CPython {STUB_PYTHON}")
        for member in names:
            if member.endswith("/"):
                continue
            if member.startswith("nvidia_pytriton.libs/"):
                target = dest / member
            elif member.startswith(("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/",
                                    "pytriton/tritonserver/caches/")):
                target = dest / "server" / member.removeprefix("pytriton/tritonserver/")
            elif member == stub_member:
                target = dest / "server" / "backends" / "python" / "triton_python_backend_stub"
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    for exe in (dest / "server" / "bin" / "tritonserver",
                dest / "server" / "backends" / "python" / "triton_python_backend_stub"):
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"{what} failed (exit {result.returncode}): {last}")


def _create_serving_venv(venv: Path) -> None:
    bases = [str(SYSTEM_PYTHON)] if SYSTEM_PYTHON.exists() else []
    bases.append(sys.executable)  # another CPython 3.11 also works with the 3.11 stub
    for base in bases:
        try:
            _run([base, "-m", "venv", str(venv)], f"creating the serving venv with {base}")
            break
        except AssetError as exc:
            shutil.rmtree(venv, ignore_errors=True)
            if base == bases[-1]:
                raise
            logger.warning("%s; falling back to %s", exc, bases[-1])
    _install_serving_requirements(venv)


def _install_serving_requirements(venv: Path) -> None:
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *SERVING_REQUIREMENTS],
         f"installing {' '.join(SERVING_REQUIREMENTS)} into the serving venv")
    _run([python, "-c", _SERVING_PROBE],
         "checking the serving venv (numpy<2, onnxruntime, tokenizers, Pillow, onnxruntime-genai)")


def _write_stamp(install: TritonInstall) -> None:
    stamp = install.root / _STAMP
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(_stamp_payload(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, stamp)


def install_triton(*, force: bool = False) -> TritonInstall:
    """Install the local Triton server and serving venv into the cache (idempotent).

    Args:
        force: Reinstall even when a complete install exists.

    Returns:
        The install.

    Raises:
        AssetError: The wheel could not be fetched or the serving venv could not be built.
    """
    install = default_install()
    with cache_lock("triton-install"):
        if install.is_complete() and not force:
            return install
        if install.server_is_current() and not force:
            # Only the serving requirements changed (e.g. Pillow added for image models): install them into
            # the existing venv. Servers already running from this install keep running undisturbed.
            logger.info("Updating the serving venv (%s)", ", ".join(SERVING_REQUIREMENTS))
            _install_serving_requirements(install.venv_dir)
            _write_stamp(install)
            return install
        wheel = fetch_distribution(PYTRITON_REQUIREMENT)
        install.root.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the final folder and rename: a crash never leaves a half install behind. The
        # venv is created in its final location because venvs hard-code their absolute path.
        staging = Path(tempfile.mkdtemp(prefix=f".{install.root.name}.tmp-", dir=install.root.parent))
        try:
            logger.info("Extracting tritonserver %s from %s", TRITON_SERVER_VERSION, wheel.name)
            _extract_server(wheel, staging)
            if install.root.exists():
                shutil.rmtree(install.root)
            os.replace(staging, install.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            logger.info("Creating the serving venv (%s)", ", ".join(SERVING_REQUIREMENTS))
            _create_serving_venv(install.venv_dir)
        except BaseException:
            shutil.rmtree(install.venv_dir, ignore_errors=True)
            raise
        _write_stamp(install)
        logger.info("Local Triton installed at %s", install.root)
        return install
