"""The transfer-learning pipeline: composition only (each step's logic lives in ``transferkit``).

data_prep → tune_search (optional: off when ``tune_space`` is "") → fine_tune × strategies, taking the tuned
options (each followed by its forgetting check) → select_strategy → prune_model (structured pruning +
distillation when `prune` is on; else a pass-through) → (evaluate, onnx_quantize) → deploy_gate →
deploy_triton only when every gate holds; an exit handler writes the run summary whatever happens.

The generative tasks (``task=summarization|instruction``, with the ``source_column``/``target_column`` or
``prompt_column``/``response_column`` parameters) run the same steps, deploy included: deploy_triton serves
their export (the task registry's ``served_export``) as a decoupled Triton model that streams tokens on
``generate_stream``, smoke-tested by a greedy generation. ``deploy_variant`` picks the served variant ("" = the
export's recommendation), ``generation_concurrency`` the requests generated at once per instance; ``min_agreement``
applies to classifiers only.
"""


from kfp import dsl

from components.data_prep.component import data_prep
from components.deploy_gate.component import deploy_gate
from components.deploy_triton.component import deploy_triton
from components.evaluate.component import evaluate
from components.fine_tune.component import fine_tune
from components.forgetting_check.component import forgetting_check
from components.onnx_quantize.component import onnx_quantize
from components.prune_model.component import prune_model
from components.run_summary.component import run_summary
from components.select_strategy.component import select_strategy
from components.tune_search.component import tune_search
from pipelines.transfer_learning.apply_placement import apply_placement
from transferkit.placement import PlacementConfig
from transferkit.tasks import DEFAULT_TASK

PIPELINE_NAME = "transferkit-transfer-learning"


def build_pipeline(placement: PlacementConfig | None = None):
    """Return the pipeline, with cluster placement applied to its tasks when given."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a pre-trained model on a labelled dataset, gate on quality and forgetting, "
        "export to ONNX/int8 and deploy to NVIDIA Triton.",
    )
    def transfer_learning(
        dataset_uri: str = "builtin:movie-sentiment",
        base_model: str = "minilm-l6",
        task: str = DEFAULT_TASK,
        text_column: str = "text",
        label_column: str = "label",
        group_column: str = "",
        max_rows: int = 0,
        source_column: str = "",
        target_column: str = "",
        prompt_column: str = "",
        response_column: str = "",
        instruction_column: str = "",
        instruction: str = "",
        strategies: list = ["full"],  # noqa: B006 - kfp reads the default from the signature
        epochs: float = 3.0,
        max_steps: int = 0,
        learning_rate: float = 0.0,
        llrd: float = 1.0,
        l2sp: float = 0.0,
        batch_size: int = 0,
        max_length: int = 0,
        truncation: str = "head",
        long_documents: str = "truncate",
        stride: int = -1,
        aggregation: str = "mean",
        chunk_loss: str = "window",
        image_size: int = 0,
        early_stopping_patience: int = 2,
        preserve_source: bool = True,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_target: str = "",
        dora: bool = False,
        lora_scale: float = 1.0,
        quantization_aware: str = "none",
        teacher: str = "",
        student_layers: int = 0,
        distill_alpha: float = 0.5,
        distill_temperature: float = 2.0,
        max_new_tokens: int = 0,
        seed: int = 42,
        min_primary: float = 0.8,
        forgetting_source: str = "",
        forgetting_min_retention: float = 0.5,
        forgetting_max_drop: float = -1.0,
        forgetting_unseen_task_papers: int = 0,
        export_target: str = "cpu",
        max_quantization_drop: float = 0.5,
        export_cpu_isa: str = "portable",
        export_max_eval_samples: int = 0,
        export_int4_recipe: str = "rtn",
        min_agreement: float = 0.9,
        deploy_variant: str = "",
        generation_concurrency: int = 4,
        model_name: str = "transferkit-model",
        deploy_mode: str = "triton",
        repository: str = "/mnt/model-repository",
        storage_uri: str = "",
        triton_url: str = "http://transferkit-triton.transferkit.svc:8000",
        instance_kind: str = "gpu",
        git_repo: str = "",
        values_file: str = "helm/values/prod.yaml",
        namespace: str = "transferkit",
        checkpoint_root: str = "",
        nproc_per_node: int = 1,
        prune: bool = False,
        prune_sparsity: float = 0.5,
        max_prune_drop: float = 1.0,
        monitor_url: str = "",
        monitor_sample_rate: float = 0.0,
        tune_space: str = "",
        tune_trials: int = 12,
    ) -> None:
        summary = run_summary(base_model=base_model, dataset_uri=dataset_uri, model_name=model_name)
        apply_placement(summary, "run_summary", placement)
        with dsl.ExitHandler(summary, name="run"):
            prep = data_prep(
                dataset_uri=dataset_uri, task=task, text_column=text_column, label_column=label_column,
                group_column=group_column, seed=seed, model=base_model, max_rows=max_rows, max_length=max_length,
                source_column=source_column, target_column=target_column, prompt_column=prompt_column,
                response_column=response_column, instruction_column=instruction_column, instruction=instruction,
            )
            apply_placement(prep, "data_prep", placement)
            search = tune_search(dataset=prep.outputs["dataset"], base_model=base_model, space=tune_space,
                                 trials=tune_trials, seed=seed)
            apply_placement(search, "tune_search", placement)
            with dsl.ParallelFor(strategies, name="strategy-sweep") as strategy:
                tune = fine_tune(
                    dataset=prep.outputs["dataset"], base_model=base_model, strategy=strategy, epochs=epochs,
                    max_steps=max_steps, learning_rate=learning_rate, llrd=llrd, l2sp=l2sp, batch_size=batch_size,
                    max_length=max_length, truncation=truncation, long_documents=long_documents, stride=stride,
                    aggregation=aggregation, chunk_loss=chunk_loss,
                    image_size=image_size, early_stopping_patience=early_stopping_patience,
                    preserve_source=preserve_source, min_retention=forgetting_min_retention, seed=seed,
                    lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_target=lora_target,
                    dora=dora, lora_scale=lora_scale, quantization_aware=quantization_aware, teacher=teacher,
                    student_layers=student_layers,
                    distill_alpha=distill_alpha, distill_temperature=distill_temperature, max_new_tokens=max_new_tokens,
                    checkpoint_root=checkpoint_root, nproc_per_node=nproc_per_node,
                    tuned_config=search.outputs["best_config"],
                )
                apply_placement(tune, "fine_tune", placement)
                forgetting = forgetting_check(
                    model=tune.outputs["model"], base_model=base_model, source=forgetting_source,
                    min_retention=forgetting_min_retention, max_drop=forgetting_max_drop,
                    unseen_task_papers=forgetting_unseen_task_papers,
                )
                apply_placement(forgetting, "forgetting_check", placement)
            pick = select_strategy(
                models=dsl.Collected(tune.outputs["model"]),
                strategies=dsl.Collected(tune.outputs["strategy"]),
                validation_metrics=dsl.Collected(tune.outputs["validation_metric"]),
                forgetting_passed=dsl.Collected(forgetting.outputs["passed"]),
                retentions=dsl.Collected(forgetting.outputs["retention"]),
            )
            apply_placement(pick, "select_strategy", placement)
            pruned = prune_model(
                model=pick.outputs["selected"], dataset=prep.outputs["dataset"], enabled=prune,
                sparsity=prune_sparsity, max_drop=max_prune_drop, distill_alpha=distill_alpha,
                distill_temperature=distill_temperature,
            )
            apply_placement(pruned, "prune_model", placement)
            scores = evaluate(model=pruned.outputs["pruned_model"], dataset=prep.outputs["dataset"])
            apply_placement(scores, "evaluate", placement)
            exported = onnx_quantize(
                model=pruned.outputs["pruned_model"], dataset=prep.outputs["dataset"], target=export_target,
                max_drop=max_quantization_drop, cpu_isa=export_cpu_isa, max_eval_samples=export_max_eval_samples,
                int4_recipe=export_int4_recipe,
            )
            apply_placement(exported, "onnx_quantize", placement)
            gate = deploy_gate(
                primary=scores.outputs["primary"], min_primary=min_primary,
                forgetting_passed=pick.outputs["forgetting_passed"], export_passed=exported.outputs["passed"],
                task=task,
            )
            apply_placement(gate, "deploy_gate", placement)
            with dsl.If(gate.outputs["Output"] == True, name="all-gates-passed"):  # noqa: E712 - kfp condition
                deployed = deploy_triton(
                    onnx_model=exported.outputs["onnx_model"], model_name=model_name, mode=deploy_mode,
                    repository=repository, storage_uri=storage_uri, triton_url=triton_url,
                    instance_kind=instance_kind, git_repo=git_repo, values_file=values_file, namespace=namespace,
                    min_agreement=min_agreement, monitor_url=monitor_url, monitor_sample_rate=monitor_sample_rate,
                    variant=deploy_variant, generation_concurrency=generation_concurrency,
                )
                apply_placement(deployed, "deploy_triton", placement)

    return transfer_learning


transfer_learning_pipeline = build_pipeline()
