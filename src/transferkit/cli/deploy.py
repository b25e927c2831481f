"""`transferkit deploy`: publish an exported model and roll it out (triton, gitops or kserve mode)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli._common import console, handle_errors


@handle_errors
def deploy(
    onnx: Path = typer.Option(..., "--onnx", help="Export directory (io_spec.json, ONNX graphs, tokenizer)."),
    name: str = typer.Option(..., "--name", help="Public model name (letters, digits, '_', '.', '-')."),
    mode: str = typer.Option("triton", "--mode", help="triton | gitops | kserve."),
    repository: str = typer.Option(..., "--repository", help="Model repository: path/PVC mount or s3://bucket/prefix."),
    storage_uri: str = typer.Option("", help="Repository URI as the cluster sees it (default: --repository)."),
    variant: str = typer.Option("", help="Graph variant (fp32, int8, qdq, fp16; generative: fp32, int4, fp16, lora); "
                                "default: the recommended one."),
    keep: int = typer.Option(3, help="Versions kept in the repository."),
    instance_kind: str = typer.Option("gpu", help="Production instance kind: gpu or cpu."),
    instance_count: int = typer.Option(1, help="Production instances per device."),
    tensorrt_fp16: bool = typer.Option(False, help="Add the TensorRT FP16 accelerator (GPU)."),
    max_batch_size: int = typer.Option(32, help="Triton max_batch_size."),
    queue_delay_us: int = typer.Option(0, help="Dynamic batcher max queue delay (microseconds)."),
    local_threads: int = typer.Option(1, help="ONNX Runtime threads per local python-backend instance."),
    local_instances: int = typer.Option(2, help="Instances of the local python-backend variant."),
    generation_concurrency: int = typer.Option(4, help="Generative models: requests generated at once (one KV "
                                               "cache each); --local-threads threads per generation."),
    monitor_url: str = typer.Option("", help="`transferkit monitor serve` URL: the local model samples to it "
                                    "(triton mode); KServe's payload logger posts to it (kserve mode)."),
    monitor_sample_rate: float = typer.Option(0.0, help="Fraction of request items sent to --monitor-url (0: off)."),
    s3_endpoint_url: str = typer.Option("", help="S3-compatible endpoint (else AWS_ENDPOINT_URL)."),
    triton_url: str = typer.Option("", help="Triton HTTP endpoint (mode triton), e.g. http://127.0.0.1:8000."),
    api_key_env: str = typer.Option("TRANSFERKIT_TRITON_API_KEY", help="Env var with the model-control key."),
    api_key_file: Path = typer.Option(None, help="Mounted secret file with the model-control key."),
    attempts: int = typer.Option(5, help="Connection attempts before failing (exponential backoff)."),
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="Smoke-test the new version (mode triton)."),
    smoke_data: Path = typer.Option(None, help="Image models: prepared dataset whose test images are the smoke "
                                              "inputs (default: a few generated images)."),
    smoke_count: int = typer.Option(4, help="Image models: how many test images --smoke-data contributes."),
    min_agreement: float = typer.Option(0.9, help="With the smoke test: roll back when fewer than this fraction of "
                                        "the export's validation sample gets the fp32 graph's label (0: off)."),
    git_repo: Path = typer.Option(None, help="Git work tree with the values file (mode gitops)."),
    values_file: str = typer.Option("helm/values/prod.yaml", help="Values file in --git-repo (read by Argo CD)."),
    values_key: str = typer.Option("model", help="Dotted key that receives name/version/repositoryUri."),
    git_remote: str = typer.Option("", help="Remote to push to (mode gitops; none = commit only)."),
    git_branch: str = typer.Option("", help="Branch to commit on (default: current)."),
    namespace: str = typer.Option("default", help="Kubernetes namespace (mode kserve)."),
    isvc_name: str = typer.Option("", help="InferenceService name (default: --name)."),
    runtime: str = typer.Option("kserve-tritonserver", help="KServe ServingRuntime ('' = auto)."),
    gpus: int = typer.Option(1, help="GPUs per predictor (0 = CPU)."),
    kubeconfig: str = typer.Option("", help="Kubeconfig file (default: in-cluster, then ~/.kube/config)."),
    kube_context: str = typer.Option("", help="Kubeconfig context."),
    ready_timeout: float = typer.Option(600.0, help="Seconds to wait for the InferenceService to be Ready."),
    output: Path = typer.Option(None, help="Write the deployment record (JSON) here; Markdown next to it."),
    registry_url: str = typer.Option("", help="Kubeflow Model Registry http(s)://host:port: register every "
                                     "deployed (or rolled-back) version ('' = off)."),
    registry_token_env: str = typer.Option("TRANSFERKIT_REGISTRY_TOKEN", help="Env var with the registry token."),
    registry_token_file: Path = typer.Option(None, help="Mounted Secret file with the registry token."),
    registry_metadata: list[str] = typer.Option([], help="KEY=VALUE version metadata (repeatable): kfp_run_id, "
                                                "dataset_uri, forgetting_retention..."),
    training_summary: Path = typer.Option(None, help="The model's training_summary.json (base model, strategy, "
                                          "data digests, primary metric for the registry)."),
) -> None:
    """Publish version N+1 and roll it out; roll back if anything fails.

    The restricted model-control key is read from --api-key-env or --api-key-file only.
    """
    from transferkit.serve.deploy import DeployConfig, deploy_model
    from transferkit.serve.registry import RegistryConfig, parse_metadata
    from transferkit.serve.repository import RepositoryOptions

    options = RepositoryOptions(max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us,
                                instance_kind=instance_kind, instance_count=instance_count,
                                tensorrt_fp16=tensorrt_fp16, variant=variant or None, local_threads=local_threads,
                                local_instance_count=local_instances, monitor_url=monitor_url,
                                monitor_sample_rate=monitor_sample_rate, generation_concurrency=generation_concurrency,
                                preferred_batch_sizes=tuple(s for s in (4, 8, 16) if s <= max_batch_size))
    config = DeployConfig(
        onnx_dir=onnx, name=name, mode=mode, repository=repository, storage_uri=storage_uri or None,
        options=options, keep_versions=keep, s3_endpoint_url=s3_endpoint_url or None,
        triton_url=triton_url or None, api_key_env=api_key_env or None,
        api_key_file=str(api_key_file) if api_key_file else None, attempts=attempts, smoke_test=smoke,
        smoke_data=smoke_data, smoke_count=smoke_count, min_agreement=min_agreement,
        git_repo=git_repo, values_file=values_file, values_key=values_key, git_remote=git_remote or None,
        git_branch=git_branch or None, namespace=namespace, isvc_name=isvc_name or None,
        kserve_runtime=runtime or None, gpus=gpus, kubeconfig=kubeconfig or None,
        kube_context=kube_context or None, ready_timeout_s=ready_timeout,
        registry=RegistryConfig(url=registry_url, token_env=registry_token_env or None,
                                token_file=str(registry_token_file) if registry_token_file else None)
        if registry_url else None,
        registry_metadata=parse_metadata(registry_metadata), training_summary=training_summary,
    )
    result = deploy_model(config)
    payload = json.dumps(result.to_dict(), indent=2, sort_keys=True)
    if output:
        from transferkit.io import write_text_atomic

        write_text_atomic(output, payload + "\n")
        write_text_atomic(output.with_suffix(".md"), result.to_markdown())
    console.print(payload, markup=False)
