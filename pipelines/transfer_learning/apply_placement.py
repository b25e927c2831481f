"""Apply a :class:`transferkit.placement.PlacementConfig` to pipeline tasks with kfp-kubernetes."""

from __future__ import annotations

from kfp import dsl, kubernetes

from transferkit.placement import PlacementConfig


def apply_placement(task: dsl.PipelineTask, step: str, config: PlacementConfig | None) -> dsl.PipelineTask:
    """Set resources, accelerators, scheduling, volumes, secrets, retries, caching and timeout on a task.

    Args:
        task: The task created in the pipeline body.
        step: Step name (``fine_tune``...), the key in the placement file.
        config: Placement; None means local defaults (only caching rules apply).

    Returns:
        The same task, for chaining.
    """
    if config is None:
        if step == "deploy_triton":
            task.set_caching_options(False)
        return task
    placement = config.for_step(step)
    if placement.accelerator_type:
        task.set_accelerator_type(placement.accelerator_type)
        task.set_accelerator_limit(placement.accelerator_count or 1)
    if placement.cpu_request:
        task.set_cpu_request(placement.cpu_request)
    if placement.cpu_limit:
        task.set_cpu_limit(placement.cpu_limit)
    if placement.memory_request:
        task.set_memory_request(placement.memory_request)
    if placement.memory_limit:
        task.set_memory_limit(placement.memory_limit)
    for key, value in sorted(placement.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in placement.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator, value=toleration.value, effect=toleration.effect
        )
    if placement.shm_size:
        # PyTorch DataLoader workers exchange tensors through /dev/shm; the container default is 64 MiB.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=placement.shm_size)
    for pvc in placement.pvcs:
        kubernetes.mount_pvc(task, pvc_name=pvc.name, mount_path=pvc.mount_path)
    for secret in config.secrets_for(step):
        kubernetes.use_secret_as_env(task, secret_name=secret.name,
                                     secret_key_to_env={key: env for env, key in sorted(secret.env.items())})
    if placement.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, placement.image_pull_secrets)
    for name, value in sorted(placement.env.items()):
        task.set_env_variable(name, value)
    if placement.retries:
        task.set_retry(num_retries=placement.retries, backoff_duration="60s", backoff_factor=2.0)
    if placement.timeout_seconds:
        kubernetes.set_timeout(task, placement.timeout_seconds)
    if placement.caching is not None:
        task.set_caching_options(placement.caching)
    return task
