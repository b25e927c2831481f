"""Submit the compiled pipeline to a Kubeflow Pipelines API with ``kfp.Client``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transferkit.errors import PipelineError

logger = logging.getLogger(__name__)
TOKEN_ENV = "KFP_TOKEN"


class _QuietKfpClientRetries(logging.Filter):
    """kfp.Client logs a full traceback per healthz retry on the root logger; keep one line each instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "kfp/client" in record.pathname.replace("\\", "/") and record.exc_info:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def submit(
    package: Path,
    *,
    host: str,
    params: dict[str, Any],
    experiment: str = "transferkit",
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
) -> dict[str, str]:
    """Create a run of ``package`` on the KFP API at ``host``.

    The bearer token comes from ``$KFP_TOKEN`` (or the kfp client's own credential discovery), never
    from the command line.

    Returns:
        ``run_id``, ``experiment`` and ``url`` of the created run.

    Raises:
        PipelineError: The package is missing, or the API is unreachable or refuses the run.
    """
    import kfp

    if not package.is_file():
        raise PipelineError(f"{package}: compiled pipeline not found; run `make compile`")
    token = os.environ.get(TOKEN_ENV) or None
    quiet = _QuietKfpClientRetries()
    logging.getLogger().addFilter(quiet)
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
        run = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=service_account,
        )
    except Exception as exc:  # kfp raises urllib3/ApiException/ValueError variants
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{host}: submission failed ({type(exc).__name__}: {reason})") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    run_id = str(run.run_id)
    url = f"{host.rstrip('/')}/#/runs/details/{run_id}"
    logger.info("Submitted run %s to experiment %s", run_id, experiment)
    return {"run_id": run_id, "experiment": experiment, "url": url}
