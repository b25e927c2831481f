"""Serving on NVIDIA Triton: model repository, publishing, a real local server, deploy modes, load generator.

Public entry points (import from the submodules; nothing heavy is imported here):

- :func:`transferkit.serve.repository.build_model_repository` - export dir -> Triton repository (ensemble of
  tokenizer or image preprocessing, graph and postprocess; production ``config.pbtxt`` +
  ``configs/local.pbtxt``).
- :func:`transferkit.serve.deploy.deploy_model` (:class:`~transferkit.serve.deploy.DeployConfig` ->
  :class:`~transferkit.serve.deploy.DeployResult`) - publish version N+1 and roll it out in ``triton``,
  ``gitops`` or ``kserve`` mode, with smoke test and rollback.
- :class:`transferkit.serve.local.LocalTriton` - the real ``tritonserver`` as a context manager.
- :func:`transferkit.serve.install.install_triton` - the ``make setup`` step that installs it.
- :func:`transferkit.serve.loadgen.run_load` - bounded load generator (HTTP/gRPC).
- :func:`transferkit.serve.publish.open_store` - filesystem/PVC or ``s3://`` repository stores.
"""
