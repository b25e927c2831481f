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
    variant: str = "",
    generation_concurrency: int = 4,
    local_threads: int = 1,
) -> NamedTuple("DeployOutputs", [("version", int), ("endpoint", str)]):
    """Publish version N+1 and roll it out in ``mode`` (``triton``, ``gitops`` or ``kserve``).

    The export's task decides what is served (the task registry's ``served_export``): a classifier becomes an
    ensemble (tokenizer or preprocessing, graph, postprocess) answering ``infer``; a generative model
    (summarization, instruction) becomes one decoupled python-backend model running the ONNX Runtime GenAI
    generator, answering ``generate`` and streaming tokens on ``generate_stream``.

    In ``triton`` mode the new version is loaded through the model-control API and smoke-tested, and old
    versions are retired; on any failure the previous version keeps serving. A classifier's smoke test compares
    the served outputs with in-process ONNX Runtime and then checks the fp32 graph's labels on the export's
    validation sample (at least ``min_agreement`` must agree, so int8 kernels that misbehave on the serving node's
    CPU never go live); a generative model's smoke test runs a short greedy generation on ``generate`` and
    ``generate_stream`` (both non-empty and equal), and ``min_agreement`` does not apply. With ``monitor_url`` and
    ``monitor_sample_rate`` > 0 a served classifier samples that fraction of its traffic to a ``transferkit
    monitor`` service (``triton`` mode); in ``kserve`` mode ``monitor_url`` receives KServe's payload-logger events.
    The restricted-API key is read from ``TRANSFERKIT_TRITON_API_KEY`` (mount it from a Secret), never a parameter.

    Args:
        variant: Export variant to serve (classifiers: ``fp32``, ``int8``, ``qdq``, ``fp16``; generative models:
            ``fp32``, ``int4``, ``fp16``, ``lora`` with per-request adapters); "" = the export's recommended one.
        generation_concurrency: Generative models: requests generated at once per instance (one KV cache each).
        local_threads: Intra-op threads per local (CPU) python-backend instance; for a generative model, per
            generation.
        min_agreement: Classifiers only (see above); 0 disables the agreement check.

    Returns:
        The published version and the inference endpoint ("" when the mode has none): ``infer`` of a classifier,
        ``generate`` of a generative model.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from transferkit.serve.deploy import DeployConfig, deploy_model
    from transferkit.serve.repository import RepositoryOptions

    result = deploy_model(DeployConfig(
        onnx_dir=Path(onnx_model.path), name=model_name, mode=mode, repository=repository,
        storage_uri=storage_uri or None, options=RepositoryOptions(
            instance_kind=instance_kind, monitor_url=monitor_url, monitor_sample_rate=monitor_sample_rate,
            variant=variant or None, generation_concurrency=generation_concurrency, local_threads=local_threads),
        keep_versions=keep_versions, triton_url=triton_url or None, git_repo=Path(git_repo) if git_repo else None,
        git_remote=git_remote or None, values_file=values_file, values_key=values_key, namespace=namespace, gpus=gpus,
        min_agreement=min_agreement,
    ))
    Path(deployment.path).write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    Path(record.path).write_text(result.to_markdown(), encoding="utf-8")
    deployment.metadata.update({"model_name": result.model_name, "version": result.version,
                                "endpoint": result.endpoint or "", "repository_uri": result.repository_uri})
    return namedtuple("DeployOutputs", ["version", "endpoint"])(result.version, result.endpoint or "")
