"""KFP component: publish an exported model to a Triton model repository and roll it out."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def deploy_triton(
    onnx_model: Input[Model],
    deployment: Output[Artifact],
    record: Output[Markdown],
    model_name: str = "transferkit-model",
    mode: str = "triton",
    repository: str = "/mnt/model-repository",
    storage_uri: str = "",
    triton_url: str = "",
    instance_kind: str = "gpu",
    keep_versions: int = 3,
    git_repo: str = "",
    git_remote: str = "",
    values_file: str = "helm/values/prod.yaml",
    values_key: str = "model",
    namespace: str = "transferkit",
    gpus: int = 1,
    min_agreement: float = 0.9,
    monitor_url: str = "",
    monitor_sample_rate: float = 0.0,
) -> NamedTuple("DeployOutputs", [("version", int), ("endpoint", str)]):
    """Publish version N+1 and roll it out in ``mode`` (``triton``, ``gitops`` or ``kserve``).

    In ``triton`` mode the new version is loaded through the model-control API, smoke-tested against
    ONNX Runtime, checked against the fp32 graph's labels on the export's validation sample (at least
    ``min_agreement`` must agree, so int8 kernels that misbehave on the serving node's CPU never go live) and
    old versions are retired; on any failure the previous version keeps serving. With ``monitor_url`` and
    ``monitor_sample_rate`` > 0 the served model samples that fraction of its traffic to a ``transferkit monitor``
    service (``triton`` mode); in ``kserve`` mode ``monitor_url`` receives KServe's payload-logger events. The
    restricted-API key is read from ``TRANSFERKIT_TRITON_API_KEY`` (mount it from a Secret), never a parameter.

    Returns:
        The published version and the inference endpoint ("" when the mode has none).
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from transferkit.serve.deploy import DeployConfig, deploy_model
    from transferkit.serve.repository import RepositoryOptions

    result = deploy_model(DeployConfig(
        onnx_dir=Path(onnx_model.path), name=model_name, mode=mode, repository=repository,
        storage_uri=storage_uri or None, options=RepositoryOptions(
            instance_kind=instance_kind, monitor_url=monitor_url, monitor_sample_rate=monitor_sample_rate),
        keep_versions=keep_versions, triton_url=triton_url or None, git_repo=Path(git_repo) if git_repo else None,
        git_remote=git_remote or None, values_file=values_file, values_key=values_key, namespace=namespace, gpus=gpus,
        min_agreement=min_agreement,
    ))
    Path(deployment.path).write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    Path(record.path).write_text(result.to_markdown(), encoding="utf-8")
    deployment.metadata.update({"model_name": result.model_name, "version": result.version,
                                "endpoint": result.endpoint or "", "repository_uri": result.repository_uri})
    return namedtuple("DeployOutputs", ["version", "endpoint"])(result.version, result.endpoint or "")
