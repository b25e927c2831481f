"""Run the real ``tritonserver`` locally over a model repository (tests, CLI, local pipeline runs).

The server runs in explicit model-control mode on loopback with ``--model-config-name=local`` (python
backend variants), in its own process group so that a shutdown also reaches the python-backend stub
processes. Shutdown is orderly (SIGTERM, bounded wait, then SIGKILL of the group) and afterwards every
``/dev/shm/triton_python_backend_shm_region_*`` file that belonged to this server is removed: a killed
server or stub leaves them behind otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from transferkit.errors import ConfigError, ServerUnavailableError, ServingError
from transferkit.serve.install import TritonInstall, find_triton
from transferkit.serve.repository import LOCAL_CONFIG_NAME, validate_model_name

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
RESTRICTED_HEADER = "triton-model-control-key"


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig TERM`` (util-linux) when available.

    If the Python process that started the server dies without cleaning up (SIGKILL, OOM), the kernel
    then sends SIGTERM to the server, which shuts down and unloads its stubs. ``setpriv`` is used
    instead of a ``preexec_fn`` because running Python code between fork and exec is unsafe in a
    multi-threaded parent. The signal follows the *thread* that started the server: start it from a
    thread that outlives it (the main thread, a pytest fixture).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _shm_regions_of(pids: Iterable[int]) -> set[str]:
    """Names of python-backend shared-memory regions that these processes name on their command line."""
    names = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        names.update(a.decode() for a in argv if a.startswith(SHM_PREFIX.encode()))
    return names


def _regions_in_use() -> set[str]:
    in_use: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            maps = (entry / "maps").read_text()
            in_use.update(part.rsplit("/", 1)[-1] for part in maps.split() if SHM_PREFIX in part)
        in_use |= _shm_regions_of([int(entry.name)])
    return in_use


def cleanup_stale_shm(min_age_s: float = 60.0) -> list[str]:
    """Remove python-backend shm files that no live process maps or names (left by killed servers).

    Only files older than ``min_age_s`` are considered, so a server that is starting right now on
    the same machine keeps its fresh region.

    Returns:
        Names of the removed files.
    """
    candidates = [p for p in SHM_DIR.glob(f"{SHM_PREFIX}*") if time.time() - p.stat().st_mtime > min_age_s]
    if not candidates:
        return []
    in_use = _regions_in_use()
    removed = []
    for path in candidates:
        if path.name not in in_use:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    if removed:
        logger.info("Removed %d stale python-backend shm file(s)", len(removed))
    return removed


_LOG_NOISE = ("CUDA driver", "CudaDriverHelper", "pinned memory", "cuda_memory_manager", "GPU metrics",
              "Collecting CPU metrics", "Failed to initialize CUDA", "DCGM")


def check_ports(**ports: int) -> None:
    """Refuse a port outside 0-65535 (0 picks a free one) before anything starts.

    Raises:
        ConfigError: Names the option and the accepted range.
    """
    seen: dict[int, str] = {}
    for field_name, port in ports.items():
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"{field_name}: {port} is not a TCP port; expected 1-65535 (0 picks a free one)")
        if port and int(port) in seen:
            raise ConfigError(f"{field_name}: port {port} is also the {seen[int(port)]}; expected distinct ports")
        seen[int(port)] = field_name


def check_ports_free(host: str, **ports: int) -> None:
    """Refuse a fixed port that another process already listens on, before the server starts.

    Triton would otherwise fail after loading its models, with the reason among pages of start-up log.

    Raises:
        ServingError: Names the option, the address and what to do.
    """
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"host: {host!r} is not an address or a name that resolves (e.g. 127.0.0.1)") from None
    for field_name, port in ports.items():
        if not port:
            continue  # 0: the server picks a free port
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                raise ServingError(f"{field_name}: {host}:{port} is not available ({exc.strerror}); stop the "
                                   "process using it or choose another port (0 picks a free one)") from None


class LocalTriton:
    """A real local ``tritonserver`` as a context manager.

    Example::

        with LocalTriton(repo, models=["minilm"]) as server:
            client = InferenceServerClient(server.http_url)

    Args:
        repository: Model repository folder.
        models: Models to load at start (``--load-model``); more can be loaded with :meth:`load`.
        http_port, grpc_port, metrics_port: Ports (0 picks a free one).
        host: Bind address; loopback unless told otherwise.
        model_config_name: Config variant (``local`` -> ``configs/local.pbtxt``; ``None`` -> config.pbtxt).
        restricted_api_key: Protect the model-control (``model-repository``) API with this key in the
            ``triton-model-control-key`` header. Pass it from an env var or secret file; it is never logged.
        startup_timeout: Seconds to wait for readiness.
        exit_timeout: Seconds Triton waits for in-flight requests at shutdown (``--exit-timeout-secs``).
        log_path: Server log file (default: a temp file kept only on failure).
        install: Installed server (default: the ``make setup`` install).
        extra_args: More ``tritonserver`` flags.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        models: Iterable[str] = (),
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        model_config_name: str | None = LOCAL_CONFIG_NAME,
        restricted_api_key: str | None = None,
        startup_timeout: float = 90.0,
        exit_timeout: int = 5,
        log_path: str | Path | None = None,
        install: TritonInstall | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        check_ports(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
        self.repository = Path(repository).absolute()
        if not self.repository.is_dir():
            raise ServingError(f"{self.repository}: model repository folder does not exist")
        self.models = [validate_model_name(m, field_name="models") for m in models]
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.model_config_name = model_config_name
        self._restricted_api_key = restricted_api_key
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.install = install
        self.extra_args = list(extra_args)
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self._regions: set[str] = set()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._keep_log = False

    # --- endpoints ---
    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP/REST endpoint."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (tritonclient.grpc form)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Server process id while running."""
        return self._process.pid if self._process else None

    def stub_pids(self) -> list[int]:
        """Process ids of the server's descendants (python-backend stubs)."""
        return _descendants(self._process.pid) if self.running() and self._process else []

    def shm_regions(self) -> set[str]:
        """Python-backend shared-memory regions this server's stubs use (and used so far)."""
        if self.running() and self._process:
            self._regions |= _shm_regions_of(_descendants(self._process.pid))
        return set(self._regions)

    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # --- lifecycle ---
    def command(self) -> list[str]:
        """The ``tritonserver`` command line (the restricted-API key is redacted)."""
        return self._command(redact=True)

    def _command(self, *, redact: bool) -> list[str]:
        install = self.install or find_triton()
        cmd = [
            str(install.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={install.backends_dir}",
            f"--cache-directory={install.cache_dir}",
            "--model-control-mode=explicit",
            "--strict-readiness=true",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-cpu-metrics=true", "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
        ]
        if self.model_config_name:
            cmd.append(f"--model-config-name={self.model_config_name}")
        cmd += [f"--load-model={m}" for m in self.models]
        if self._restricted_api_key is not None:
            key = "***" if redact else self._restricted_api_key
            cmd.append(f"--http-restricted-api=model-repository:{RESTRICTED_HEADER}={key}")
            cmd.append(f"--grpc-restricted-protocol=model-repository:{RESTRICTED_HEADER}={key}")
        return cmd + self.extra_args

    def start(self) -> LocalTriton:
        """Start the server and wait until it is ready (models in ``models`` loaded).

        Raises:
            ServingError: The server exited or did not become ready in time (last log lines included).
        """
        if self.running():
            return self
        install = self.install or find_triton()
        self.install = install
        cleanup_stale_shm()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        logger.info("Starting %s", " ".join(self.command()))
        self._process = subprocess.Popen(
            _with_parent_death_signal(self._command(redact=False)),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=install.environment(),
            cwd=str(self.repository),
            start_new_session=True,
        )
        self._stopping.clear()
        self._watcher = threading.Thread(target=self._watch_regions, name="triton-shm-watch", daemon=True)
        self._watcher.start()
        try:
            self._wait_ready()
        except BaseException:
            self._keep_log = True
            self.stop()
            raise
        logger.info("Triton ready: HTTP %s, gRPC %s, metrics %s", self.http_url, self.grpc_url, self.metrics_url)
        return self

    def _watch_regions(self) -> None:
        # Stubs start and stop with model loads; remember every region they name so that stop() can
        # remove what a crash would leave behind.
        while not self._stopping.wait(0.5):
            if self._process is None or self._process.poll() is not None:
                return
            self._regions |= _shm_regions_of(_descendants(self._process.pid))

    def _wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServingError(f"tritonserver exited with code {self._process.returncode} during startup: "
                                   f"{self.log_tail()}")
            with (contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError),
                  urllib.request.urlopen(url, timeout=2) as response):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise ServerUnavailableError(
            f"tritonserver not ready at {url} after {self.startup_timeout:.0f}s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 3) -> str:
        """Last error-ish lines of the server log, joined on one line."""
        if not self.log_path or not self.log_path.exists():
            return "no log"
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            tail = deque((ln.strip() for ln in handle if ln.strip()), maxlen=200)
        # The cause is an E line (or an "error"/"failed" line); CUDA/pinned-memory lines on a CPU-only host are noise
        # that used to hide it.
        useful = [ln for ln in tail if not any(noise in ln for noise in _LOG_NOISE)]
        errors = [ln for ln in useful if ln.startswith("E") or any(w in ln.lower() for w in ("error", "failed"))]
        chosen = (errors or [ln for ln in useful if ln.startswith("W")] or useful or list(tail))[-lines:]
        return " | ".join(chosen) if chosen else "empty log"

    def stop(self) -> None:
        """Stop the server, its stubs, and remove this server's shm files (idempotent)."""
        process = self._process
        if process is None:
            return
        self._stopping.set()
        if process.poll() is None:
            self._regions |= _shm_regions_of(_descendants(process.pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not exit in time; killing its process group")
        # The group holds stubs of unloaded models too; nothing of it may survive the server.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        for region in self._regions:
            with contextlib.suppress(FileNotFoundError):
                (SHM_DIR / region).unlink()
        self._regions.clear()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._own_log and self.log_path is not None and not self._keep_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
        self._process = None
        logger.info("Triton stopped (exit code %s)", process.returncode)

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- model control ---
    def client(self):
        """A ``tritonclient.http.InferenceServerClient`` for this server."""
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http_url.removeprefix("http://"), network_timeout=120.0)

    def _headers(self) -> dict[str, str] | None:
        return {RESTRICTED_HEADER: self._restricted_api_key} if self._restricted_api_key is not None else None

    def load(self, name: str, *, timeout: float = 120.0) -> None:
        """Load (or reload) a model and wait until it is ready.

        Raises:
            ServingError: Triton refused or failed to load it (reason from the server).
        """
        from tritonclient.utils import InferenceServerException

        validate_model_name(name)
        client = self.client()
        try:
            client.load_model(name, headers=self._headers())
            deadline = time.monotonic() + timeout
            while not client.is_model_ready(name):
                if time.monotonic() > deadline:
                    raise ServingError(f"model {name!r}: not ready {timeout:.0f}s after load")
                time.sleep(0.2)
        except InferenceServerException as exc:
            raise ServingError(f"model {name!r}: load failed ({exc.message()})") from exc
        finally:
            client.close()

    def unload(self, name: str) -> None:
        """Unload a model (its stub processes stay until exit; :meth:`stop` removes them)."""
        from tritonclient.utils import InferenceServerException

        client = self.client()
        try:
            client.unload_model(name, headers=self._headers())
        except InferenceServerException as exc:
            raise ServingError(f"model {name!r}: unload failed ({exc.message()})") from exc
        finally:
            client.close()


@contextlib.contextmanager
def local_triton(repository: str | Path, **kwargs: object) -> Iterator[LocalTriton]:
    """Functional form of :class:`LocalTriton`."""
    server = LocalTriton(repository, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server
