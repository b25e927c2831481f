"""A bad-input corpus over every command: each case is refused with exactly one ``error:`` line naming the thing
at fault, a non-zero exit, no traceback, nothing new on disk and no secret echoed.

Cases run in-process through typer's ``CliRunner`` (fast: no case loads a model or trains); a few cases that
need a real process (signals) live in ``test_interrupts.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import write_movie_slice
from transferkit.cli.main import app

runner = CliRunner()
SECRET = "hunter2-s3cr3t"


@dataclass(frozen=True)
class Bad:
    """One bad input: the command line (``{in}`` = shared inputs, ``{t}`` = this case's directory) and a fragment
    of the one error line that names the field/file at fault and what was expected."""

    id: str
    args: str
    expect: str
    env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DOWN = f"http://127.0.0.1:{_free_port()}"  # nothing listens there

DATA = "data prepare --out {t}/out --dataset"
TRAIN = "train --data {in}/movie --model minilm-l6 --strategy full --out {t}/model"
DISTILL = "train --data {in}/movie --model minilm-l6 --strategy distill --out {t}/student"
EVAL = "evaluate --model {in}/model --data {in}/movie --out {t}/eval"
FORGET = "forgetting --model {in}/model --base minilm-l6 --out {t}/forget"
EXPORT = "export --model {in}/model --data {in}/movie --out {t}/onnx"
DEPLOY = "deploy --onnx {in}/onnx --name sentiment --repository {t}/repo --triton-url " + DOWN
SERVE = "serve --repository {in}/repo"
BENCH = "bench serve --model sentiment --http-url " + DOWN

CASES = [
    # -- data prepare: files, columns, encodings, sizes
    Bad("data-missing-file", f"{DATA} {{in}}/nope.csv", "nope.csv"),
    Bad("data-empty-file", f"{DATA} {{in}}/empty.csv", "empty.csv"),
    Bad("data-header-only", f"{DATA} {{in}}/header_only.csv", "header_only.csv"),
    Bad("data-wrong-columns", f"{DATA} {{in}}/wrong_columns.csv", "text"),
    Bad("data-text-column-missing", f"{DATA} {{in}}/good.csv --text-column body", "body"),
    Bad("data-label-column-missing", f"{DATA} {{in}}/good.csv --label-column stars", "stars"),
    Bad("data-latin1", f"{DATA} {{in}}/latin1.csv", "latin1.csv"),
    Bad("data-binary-garbage", f"{DATA} {{in}}/garbage.csv", "garbage.csv"),
    Bad("data-corrupt-parquet", f"{DATA} {{in}}/corrupt.parquet", "corrupt.parquet"),
    Bad("data-bad-jsonl", f"{DATA} {{in}}/bad.jsonl", "bad.jsonl"),
    Bad("data-unknown-extension", f"{DATA} {{in}}/data.xyz", "data.xyz"),
    Bad("data-unknown-builtin", f"{DATA} builtin:no-such-set", "no-such-set"),
    Bad("data-one-class", f"{DATA} {{in}}/one_class.csv", "label"),
    Bad("data-empty-texts", f"{DATA} {{in}}/empty_texts.csv", "text"),
    Bad("data-unclosed-quote", f"{DATA} {{in}}/unclosed.csv", "unclosed.csv"),
    Bad("data-ragged-rows", f"{DATA} {{in}}/ragged.csv", "ragged.csv"),
    Bad("data-empty-dir", f"{DATA} {{in}}/empty_dir", "empty_dir"),
    Bad("data-dataset-empty-string", "data prepare --out {t}/out --dataset ''", "dataset"),
    Bad("data-validation-fraction-1.5", f"{DATA} {{in}}/good.csv --validation-fraction 1.5", "validation_fraction"),
    Bad("data-test-fraction-negative", f"{DATA} {{in}}/good.csv --test-fraction -0.1", "test_fraction"),
    Bad("data-fractions-sum-1", f"{DATA} {{in}}/good.csv --validation-fraction 0.5 --test-fraction 0.5", "fraction"),
    Bad("data-seed-negative", f"{DATA} {{in}}/good.csv --seed -1", "seed"),
    Bad("data-max-rows-0", f"{DATA} {{in}}/good.csv --max-rows 0", "max_rows"),
    Bad("data-max-rows-negative", f"{DATA} {{in}}/good.csv --max-rows -5", "max_rows"),
    Bad("data-unicode-column-missing", f"{DATA} {{in}}/good.csv --label-column étiquette", "étiquette"),
    Bad("data-max-rows-not-int", f"{DATA} {{in}}/good.csv --max-rows lots", "--max-rows"),
    Bad("data-max-length-0", f"{DATA} {{in}}/good.csv --max-length 0", "max_length"),
    Bad("data-min-class-count-1", f"{DATA} {{in}}/good.csv --min-class-count 1", "min_class_count"),
    Bad("data-unknown-task", f"{DATA} {{in}}/good.csv --task translation", "task"),
    Bad("data-min-image-size-0", f"{DATA} {{in}}/good.csv --task image-classification --min-image-size 0",
        "min_image_size"),
    Bad("data-empty-text-column", f"{DATA} {{in}}/good.csv --text-column ''", "text_column"),
    Bad("data-same-columns", f"{DATA} {{in}}/good.csv --label-column text", "column"),
    Bad("data-split-column-missing", f"{DATA} {{in}}/good.csv --split-column fold", "fold"),
    Bad("data-unknown-model", f"{DATA} {{in}}/good.csv --model no-such-model", "no-such-model"),
    Bad("data-out-is-a-file", "data prepare --dataset {in}/good.csv --out {in}/good.csv", "out"),
    Bad("data-out-users-dir", "data prepare --dataset {in}/good.csv --out {in}/users_dir", "users_dir"),
    Bad("data-out-under-a-file", "data prepare --dataset {in}/good.csv --out {in}/good.csv/out", "out"),
    Bad("data-out-read-only-fs", "data prepare --dataset {in}/good.csv --out /proc/transferkit-out", "out"),
    Bad("data-image-task-on-text", f"{DATA} {{in}}/good.csv --task image-classification", "image"),
    Bad("data-s3-no-server", f"{DATA} s3://bucket/key.csv", "s3://bucket/key.csv",
        env={"AWS_ENDPOINT_URL": DOWN, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}),
    Bad("data-unknown-option", f"{DATA} {{in}}/good.csv --no-such-flag", "--no-such-flag"),
    Bad("data-max-length-word", f"{DATA} {{in}}/good.csv --max-length long", "max_length"),
    # -- train
    Bad("train-data-missing", "train --data {in}/nope --model minilm-l6 --strategy full --out {t}/m", "nope"),
    Bad("train-data-not-prepared", "train --data {in}/empty_dir --model minilm-l6 --strategy full --out {t}/m",
        "empty_dir"),
    Bad("train-unknown-strategy", "train --data {in}/movie --model minilm-l6 --strategy finetune --out {t}/m",
        "strategy"),
    Bad("train-lr-0", f"{TRAIN} --learning-rate 0", "learning_rate"),
    Bad("train-lr-text", f"{TRAIN} --learning-rate fast", "--learning-rate"),
    Bad("train-epochs-negative", f"{TRAIN} --epochs -1", "epochs"),
    Bad("train-batch-size-0", f"{TRAIN} --batch-size 0", "batch_size"),
    Bad("train-max-length-1", f"{TRAIN} --max-length 1", "max_length"),
    Bad("train-max-length-word", f"{TRAIN} --max-length long", "max_length: expected a number of tokens or 'auto'"),
    Bad("train-max-length-below-special-tokens", f"{TRAIN} --max-length 2",
        "max_length: 2 leaves no room for text after the tokenizer's 2 special tokens"),
    Bad("train-stride-not-below-window", f"{TRAIN} --max-length 32 --long-documents chunk --stride 30",
        "stride: 30 overlapping tokens must be below the window of 30 text tokens"),
    Bad("train-stride-without-chunk", f"{TRAIN} --stride 4", "stride: applies to --long-documents chunk"),
    Bad("train-truncation-unknown", f"{TRAIN} --truncation middle", "truncation"),
    Bad("train-aggregation-unknown", f"{TRAIN} --long-documents chunk --aggregation sum", "aggregation"),
    Bad("train-warmup-ratio-1", f"{TRAIN} --warmup-ratio 1", "warmup_ratio"),
    Bad("train-weight-decay-2", f"{TRAIN} --weight-decay 2", "weight_decay"),
    Bad("train-llrd-0", f"{TRAIN} --llrd 0", "llrd"),
    Bad("train-augment-prob-1", f"{TRAIN} --augment-prob 1", "augment_prob"),
    Bad("train-min-retention-2", f"{TRAIN} --min-retention 2", "min_retention"),
    Bad("train-unknown-model", "train --data {in}/movie --model no-such-model --strategy full --out {t}/m",
        "no-such-model"),
    Bad("train-out-is-data", "train --data {in}/movie --model minilm-l6 --strategy full --out {in}/movie/m",
        "out"),
    Bad("train-seed-negative", f"{TRAIN} --seed -1", "seed"),
    Bad("train-seed-too-large", f"{TRAIN} --seed 4294967296", "seed"),
    Bad("train-nproc-0", f"{TRAIN} --nproc-per-node 0", "nproc_per_node"),
    Bad("train-unknown-launcher", f"{TRAIN} --launcher slurm", "--launcher"),
    Bad("train-trainjob-nodes-0", f"{TRAIN} --launcher trainjob --nodes 0", "nodes"),
    Bad("train-checkpoint-is-out", f"{TRAIN} --checkpoint-dir {{t}}/model", "checkpoint_dir"),
    # -- train --strategy distill
    Bad("distill-without-teacher", f"{DISTILL}", "teacher: strategy distill needs --teacher MODEL_DIR"),
    Bad("distill-teacher-missing", f"{DISTILL} --teacher {{in}}/nope",
        "/nope is not a directory; expected a fine-tuned model directory"),
    Bad("distill-teacher-not-a-model", f"{DISTILL} --teacher {{in}}/empty_dir", "has no config.json"),
    Bad("distill-teacher-corrupt-config", f"{DISTILL} --teacher {{in}}/corrupt_model", "is not valid JSON"),
    Bad("distill-teacher-other-labels", f"{DISTILL} --teacher {{in}}/teacher_3_labels",
        "teacher_3_labels has labels ['bad', 'good', 'meh']; the data in"),
    Bad("distill-teacher-other-vocabulary", f"{DISTILL} --teacher {{in}}/teacher_other_vocab",
        "has a vocabulary of 50 tokens"),
    Bad("distill-teacher-without-weights", f"{DISTILL} --teacher {{in}}/teacher", "teacher: "),
    Bad("distill-student-layers-0", f"{DISTILL} --teacher {{in}}/teacher --student-layers 0",
        "student_layers: expected an integer >= 1"),
    Bad("distill-student-layers-all", f"{DISTILL} --teacher {{in}}/teacher --student-layers 6",
        "student_layers: 6 must be fewer than the 6 encoder layers of minilm-l6"),
    Bad("distill-student-layers-more", f"{DISTILL} --teacher {{in}}/teacher --student-layers 9",
        "student_layers: 9 must be fewer than the 6 encoder layers"),
    Bad("distill-alpha-2", f"{DISTILL} --teacher {{in}}/teacher --distill-alpha 2", "distill_alpha"),
    Bad("distill-temperature-0", f"{DISTILL} --teacher {{in}}/teacher --distill-temperature 0",
        "distill_temperature"),
    Bad("distill-teacher-without-strategy", f"{TRAIN} --teacher {{in}}/teacher",
        "teacher: only applies to strategy distill, not full"),
    # -- evaluate
    Bad("eval-model-missing", "evaluate --model {in}/nope --data {in}/movie --out {t}/eval", "nope"),
    Bad("eval-data-missing", "evaluate --model {in}/model --data {in}/nope --out {t}/eval", "nope"),
    Bad("eval-model-is-a-file", "evaluate --model {in}/good.csv --data {in}/movie --out {t}/eval", "good.csv"),
    Bad("eval-model-corrupt-config", "evaluate --model {in}/corrupt_model --data {in}/movie --out {t}/eval",
        "corrupt_model"),
    Bad("eval-unknown-split", f"{EVAL} --split holdout", "split"),
    Bad("eval-batch-size-0", f"{EVAL} --batch-size 0", "batch_size"),
    Bad("eval-min-primary-above-1", f"{EVAL} --min-primary 1.5", "min_primary"),
    Bad("eval-min-primary-negative", f"{EVAL} --min-primary -0.2", "min_primary"),
    Bad("eval-min-loss-negative", f"{EVAL} --primary-metric loss --min-primary -1", "min_primary"),
    Bad("eval-unknown-metric", f"{EVAL} --primary-metric bleu", "primary_metric"),
    Bad("eval-max-length-1", f"{EVAL} --max-length 1", "max_length"),
    Bad("eval-slice-min-size-0", f"{EVAL} --slice-min-size 0", "slice_min_size"),
    Bad("eval-batch-size-text", f"{EVAL} --batch-size many", "--batch-size"),
    # -- forgetting
    Bad("forget-no-base", "forgetting --model {in}/nope --out {t}/forget", "base"),
    Bad("forget-unknown-mode", f"{FORGET} --mode amnesia", "mode"),
    Bad("forget-unknown-metric", f"{FORGET} --metric bleu", "metric"),
    Bad("forget-max-drop-negative", f"{FORGET} --max-drop -1", "max_drop"),
    Bad("forget-min-retention-2", f"{FORGET} --min-retention 2", "min_retention"),
    Bad("forget-min-retention-0", f"{FORGET} --min-retention 0", "min_retention"),
    Bad("forget-batch-size-0", f"{FORGET} --batch-size 0", "batch_size"),
    Bad("forget-probe-size-1", f"{FORGET} --probe-size 1", "probe_size"),
    Bad("forget-image-size-4", f"{FORGET} --image-size 4", "image_size"),
    Bad("forget-max-length-1", f"{FORGET} --max-length 1", "max_length"),
    Bad("forget-model-missing", "forgetting --model {in}/nope --base minilm-l6 --out {t}/forget", "nope"),
    Bad("forget-source-missing", f"{FORGET} --source {{in}}/nope.csv", "nope.csv"),
    # -- export
    Bad("export-model-missing", "export --model {in}/nope --data {in}/movie --out {t}/onnx", "nope"),
    Bad("export-data-missing", "export --model {in}/model --data {in}/nope --out {t}/onnx", "nope"),
    Bad("export-opset-5", f"{EXPORT} --opset 5", "opset"),
    Bad("export-atol-0", f"{EXPORT} --atol 0", "atol"),
    Bad("export-max-drop-200", f"{EXPORT} --max-drop 200", "max_drop"),
    Bad("export-unknown-target", f"{EXPORT} --target tpu", "target"),
    Bad("export-unknown-on-drop", f"{EXPORT} --on-drop ignore", "on_drop"),
    Bad("export-threads-0", f"{EXPORT} --threads 0", "threads"),
    Bad("export-calibration-size-0", f"{EXPORT} --calibration-size 0", "calibration_size"),
    Bad("export-unknown-cpu-isa", f"{EXPORT} --cpu-isa sse2", "cpu_isa"),
    Bad("export-out-is-model", "export --model {in}/model --data {in}/movie --out {in}/model", "out"),
    Bad("export-out-is-a-file", "export --model {in}/model --data {in}/movie --out {in}/good.csv", "out"),
    # -- deploy
    Bad("deploy-onnx-missing", "deploy --onnx {in}/nope --name s --repository {t}/repo --triton-url " + DOWN, "nope"),
    Bad("deploy-onnx-empty", "deploy --onnx {in}/empty_dir --name s --repository {t}/repo --triton-url " + DOWN,
        "empty_dir"),
    Bad("deploy-name-slash", "deploy --onnx {in}/onnx --name a/b --repository {t}/repo --triton-url " + DOWN, "name"),
    Bad("deploy-name-dotdot", "deploy --onnx {in}/onnx --name .. --repository {t}/repo --triton-url " + DOWN, "name"),
    Bad("deploy-name-space", "deploy --onnx {in}/onnx --name 'my model' --repository {t}/repo --triton-url " + DOWN,
        "name"),
    Bad("deploy-name-empty", "deploy --onnx {in}/onnx --name '' --repository {t}/repo --triton-url " + DOWN, "name"),
    Bad("deploy-name-unicode", "deploy --onnx {in}/onnx --name modèle --repository {t}/repo --triton-url " + DOWN,
        "name"),
    Bad("deploy-name-leading-dot", "deploy --onnx {in}/onnx --name .hidden --repository {t}/repo --triton-url "
        + DOWN, "name"),
    Bad("deploy-unknown-mode", f"{DEPLOY} --mode helm", "mode"),
    Bad("deploy-keep-0", f"{DEPLOY} --keep 0", "keep"),
    Bad("deploy-max-batch-0", f"{DEPLOY} --max-batch-size 0", "max_batch_size"),
    Bad("deploy-queue-delay-negative", f"{DEPLOY} --queue-delay-us -1", "max_queue_delay_us"),
    Bad("deploy-instance-kind", f"{DEPLOY} --instance-kind tpu", "instance_kind"),
    Bad("deploy-min-agreement-1.5", f"{DEPLOY} --min-agreement 1.5", "min_agreement"),
    Bad("deploy-attempts-0", f"{DEPLOY} --attempts 0", "attempts"),
    Bad("deploy-smoke-count-0", f"{DEPLOY} --smoke-count 0", "smoke_count"),
    Bad("deploy-no-triton-url", "deploy --onnx {in}/onnx --name s --repository {t}/repo", "triton_url"),
    Bad("deploy-url-with-password",
        f"deploy --onnx {{in}}/onnx --name s --repository {{t}}/repo --triton-url http://admin:{SECRET}@127.0.0.1:0",
        "triton_url"),
    Bad("deploy-api-key-file-missing", f"{DEPLOY} --api-key-file {{in}}/nope.key", "nope.key"),
    Bad("deploy-gitops-no-repo", "deploy --onnx {in}/onnx --name s --repository {t}/repo --mode gitops", "git_repo"),
    Bad("deploy-gitops-not-git", "deploy --onnx {in}/onnx --name s --repository {t}/repo --mode gitops "
        "--git-repo {in}/empty_dir", "empty_dir"),
    Bad("deploy-kserve-local-repo", "deploy --onnx {in}/onnx --name s --repository {t}/repo --mode kserve",
        "storage_uri"),
    Bad("deploy-kserve-gpus-negative", "deploy --onnx {in}/onnx --name s --repository s3://b/p --mode kserve "
        "--gpus -1", "gpus"),
    Bad("deploy-io-spec-corrupt", "deploy --onnx {in}/onnx_corrupt --name s --repository {t}/repo --triton-url "
        + DOWN, "io_spec.json"),
    # -- serve
    Bad("serve-repository-missing", "serve --repository {in}/nope", "nope"),
    Bad("serve-repository-is-a-file", "serve --repository {in}/good.csv", "good.csv"),
    Bad("serve-port-70000", f"{SERVE} --port 70000", "http_port"),
    Bad("serve-port-text", f"{SERVE} --port http", "--port"),
    Bad("serve-grpc-port-negative", f"{SERVE} --grpc-port -5", "grpc_port"),
    Bad("serve-same-ports", f"{SERVE} --port 18123 --grpc-port 18123", "port"),
    Bad("serve-api-key-file-missing", f"{SERVE} --api-key-file {{in}}/nope.key", "nope.key"),
    Bad("serve-api-key-env-unset", f"{SERVE} --api-key-env TRANSFERKIT_NO_SUCH_VAR", "TRANSFERKIT_NO_SUCH_VAR"),
    Bad("serve-host-unresolvable", f"{SERVE} --host 999.1.1.1 --port 0 --grpc-port 0 --metrics-port 0", "host"),
    Bad("serve-port-in-use", f"{SERVE} --port {{busy}} --grpc-port 0 --metrics-port 0", "is not available"),
    Bad("serve-unknown-model", f"{SERVE} --model sentiment/../x --port 0 --grpc-port 0 --metrics-port 0", "model"),
    # Triton itself refuses the model: its own error line is the cause, not the first warning of its log.
    Bad("serve-model-config-error", "serve --repository {in}/repo --port 0 --grpc-port 0 --metrics-port 0",
        "Poll failed for model directory 'sentiment'"),
    # -- pipeline
    Bad("pipeline-run-without-local", "pipeline run --work-dir {t}/work", "--local"),
    Bad("pipeline-params-missing", "pipeline run --local --params {in}/nope.yaml --work-dir {t}/work", "nope.yaml"),
    Bad("pipeline-params-bad-yaml", "pipeline run --local --params {in}/bad.yaml --work-dir {t}/work", "bad.yaml"),
    Bad("pipeline-params-a-list", "pipeline run --local --params {in}/list.yaml --work-dir {t}/work", "list.yaml"),
    Bad("pipeline-package-missing", "pipeline run --local --package {in}/nope.yaml --work-dir {t}/work", "nope.yaml"),
    Bad("pipeline-param-type", "pipeline run --local --params {in}/type.yaml --work-dir {t}/work", "max_rows"),
    Bad("pipeline-param-range", "pipeline run --local --params {in}/range.yaml --work-dir {t}/work", "min_agreement"),
    Bad("pipeline-param-model-name", "pipeline run --local --params {in}/name.yaml --work-dir {t}/work", "model_name"),
    Bad("pipeline-param-task", "pipeline run --local --params {in}/task.yaml --work-dir {t}/work", "task"),
    Bad("pipeline-param-strategy", "pipeline run --local --params {in}/strategy.yaml --work-dir {t}/work",
        "strategies"),
    Bad("pipeline-param-dataset-missing", "pipeline run --local --params {in}/dataset.yaml --work-dir {t}/work",
        "dataset"),
    Bad("pipeline-param-no-strategies", "pipeline run --local --params {in}/no_strategies.yaml --work-dir {t}/w",
        "strategies"),
    Bad("pipeline-param-lr-negative", "pipeline run --local --params {in}/lr.yaml --work-dir {t}/work",
        "learning_rate"),
    Bad("pipeline-package-not-yaml", "pipeline run --local --package {in}/bad.yaml --work-dir {t}/work", "bad.yaml"),
    Bad("pipeline-package-not-a-pipeline", "pipeline run --local --package {in}/type.yaml --work-dir {t}/work",
        "not a compiled pipeline"),
    Bad("pipeline-work-dir-is-a-file", "pipeline run --local --work-dir {in}/good.csv", "good.csv"),
    Bad("pipeline-submit-bad-host", "pipeline submit --host not-a-url", "host"),
    Bad("pipeline-submit-host-down", f"pipeline submit --host {DOWN}", "127.0.0.1"),
    Bad("pipeline-submit-host-password", f"pipeline submit --host http://admin:{SECRET}@127.0.0.1:1", "host"),
    Bad("pipeline-compile-config-missing", "pipeline compile --config {in}/nope.yaml --output {t}/p.yaml",
        "nope.yaml"),
    # -- models
    Bad("models-show-unknown", "models show no-such-model", "no-such-model"),
    Bad("models-show-missing-dir", "models show {in}/nope", "nope"),
    Bad("models-show-dir-without-config", "models show {in}/empty_dir", "empty_dir"),
    Bad("models-show-corrupt-config", "models show {in}/corrupt_model", "corrupt_model"),
    # -- bench
    Bad("bench-concurrency-text", f"{BENCH} --concurrency 1,a", "concurrency"),
    Bad("bench-concurrency-0", f"{BENCH} --concurrency 0", "concurrency"),
    Bad("bench-protocol", f"{BENCH} --protocol udp", "protocol"),
    Bad("bench-requests-0", f"{BENCH} --requests 0", "requests"),
    Bad("bench-duration-0", f"{BENCH} --duration 0", "duration"),
    Bad("bench-remote", "bench serve --model s --http-url http://10.1.2.3:8000 --protocol http", "10.1.2.3"),
    Bad("bench-images-missing", f"{BENCH} --images {{in}}/nope", "nope"),
    Bad("bench-images-empty", f"{BENCH} --images {{in}}/empty_dir", "empty_dir"),
    Bad("bench-server-down", f"{BENCH} --protocol http --requests 1 --concurrency 1 --metrics-url ''", "sentiment"),
    Bad("bench-url-password", f"bench serve --model s --http-url http://u:{SECRET}@127.0.0.1:1 --protocol http "
        "--requests 1 --concurrency 1 --metrics-url ''", "s"),
]


def _write_inputs(root: Path) -> None:
    rows = [f"sentence number {i} about a film,{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (root / "good.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text("text,label\n")
    (root / "wrong_columns.csv").write_text("review,stars\n" + "\n".join(rows) + "\n")
    (root / "latin1.csv").write_bytes(("text,label\n" + "\n".join(rows) + "\ncaf\xe9 cr\xe8me,pos\n").encode("latin-1"))
    (root / "garbage.csv").write_bytes(bytes(range(256)) * 8)
    (root / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    (root / "bad.jsonl").write_text('{"text": "fine", "label": "pos"}\n{"text": "broken", \n')
    (root / "data.xyz").write_text("text,label\nx,1\n")
    (root / "one_class.csv").write_text("text,label\n" + "\n".join(f"sentence {i},pos" for i in range(60)) + "\n")
    (root / "empty_texts.csv").write_text("text,label\n" + "\n".join(f",{'pos' if i % 2 else 'neg'}"
                                                                         for i in range(60)) + "\n")
    (root / "unclosed.csv").write_text("text,label\n" + "\n".join(rows[:20]) + '\n"unclosed quote,pos\n'
                                       + "\n".join(rows[20:]) + "\n")
    (root / "ragged.csv").write_text("text,label\n" + "\n".join(rows[:20]) + "\nsome,extra,fields,here\n")
    (root / "empty_dir").mkdir()
    (root / "users_dir").mkdir()
    (root / "users_dir" / "thesis.tex").write_text("my own file")
    write_movie_slice(root / "movie", train=16, validation=8, test=8)
    (root / "model").mkdir()  # a directory without a model in it
    (root / "corrupt_model").mkdir()
    (root / "corrupt_model" / "config.json").write_text("{not json")
    (root / "onnx").mkdir()  # an export directory without io_spec.json
    teachers = (("teacher", ["negative", "positive"], 30522), ("teacher_3_labels", ["bad", "good", "meh"], 30522),
                ("teacher_other_vocab", ["negative", "positive"], 50))
    for name, labels, vocab in teachers:
        # Only what a teacher is checked by before anything loads (no weights: no case loads a model).
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": vocab}))
        (root / name / "labels.json").write_text(json.dumps(labels))
    (root / "repo" / "sentiment").mkdir(parents=True)
    (root / "repo" / "sentiment" / "config.pbtxt").write_text('name: "sentiment"\n')
    (root / "onnx_corrupt").mkdir()
    (root / "onnx_corrupt" / "io_spec.json").write_text("{not json")
    (root / "bad.yaml").write_text("max_rows: [1, 2\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "type.yaml").write_text("max_rows: lots\n")
    (root / "range.yaml").write_text("min_agreement: 1.5\n")
    (root / "name.yaml").write_text("model_name: ../escape\n")
    (root / "task.yaml").write_text("task: translation\n")
    (root / "no_strategies.yaml").write_text("strategies: []\n")
    (root / "lr.yaml").write_text("learning_rate: -0.001\n")
    (root / "strategy.yaml").write_text("strategies: [finetune]\n")
    (root / "dataset.yaml").write_text(f"dataset_uri: {root / 'nope.csv'}\n")


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port another process (here: this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    _write_inputs(root)
    return root


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns if p.is_file() else 0 for root in roots for p in root.rglob("*")}


def _shm() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")}


@pytest.fixture()
def chdir(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "case"
    work.mkdir()
    previous = Path.cwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(previous)


def run_case(case: Bad, inputs: Path, work: Path, monkeypatch: pytest.MonkeyPatch, busy: int = 0
             ) -> tuple[int, str, str]:
    """Run one case; return (exit code, stdout, stderr)."""
    import shlex

    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args = shlex.split(case.args.replace("{in}", str(inputs)).replace("{t}", str(work)).replace("{busy}", str(busy)))
    result = runner.invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(result.exception))
        return 1, result.stdout, result.stderr + "\nTraceback (in-process):\n" + tb
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case: Bad, inputs: Path, chdir: Path, monkeypatch: pytest.MonkeyPatch,
                                      busy_port: int) -> None:
    before, shm = _tree(inputs, chdir), _shm()
    code, out, err = run_case(case, inputs, chdir, monkeypatch, busy_port)
    text = out + err
    assert code != 0, f"exit 0 on bad input:\n{text}"
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"expected exactly one 'error:' line:\n{text}"
    assert case.expect in errors[0], errors[0]
    assert SECRET not in text, text
    assert _tree(inputs, chdir) == before, "files were left behind or changed"
    assert _shm() <= shm, "a server left shared-memory files behind"


def test_the_corpus_covers_every_command() -> None:
    commands = {c.args.split()[0] for c in CASES}
    assert {"data", "train", "evaluate", "forgetting", "export", "deploy", "serve", "pipeline", "models",
            "bench"} <= commands
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


if __name__ == "__main__":  # the probe: print each case's outcome without asserting
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="probe21-"))
    (base / "in").mkdir()
    _write_inputs(base / "in")
    mp = pytest.MonkeyPatch()
    selected = [c for c in CASES if len(sys.argv) < 2 or any(s in c.id for s in sys.argv[1:])]
    for case in selected:
        work = base / case.id
        work.mkdir()
        os.chdir(work)
        before = _tree(base / "in", work)
        code, out, err = run_case(case, base / "in", work, mp)
        after = _tree(base / "in", work)
        mp.undo()
        text = out + err
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        print(json.dumps({"id": case.id, "code": code, "errors": errors, "traceback": "Traceback" in text,
                          "secret": SECRET in text, "new": sorted(set(after) - set(before))[:3],
                          "changed": sorted(k for k in before if after.get(k) != before[k])[:3],
                          "expect_ok": bool(errors) and case.expect in errors[0],
                          "tail": text.strip().splitlines()[-3:] if not errors or len(errors) > 1 else []}),
              flush=True)
