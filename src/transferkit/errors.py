"""Typed exceptions for every step.

Every error a user can cause derives from :class:`TransferkitError`. Its message is one line that
names the file, field, column or row at fault and what was expected; the CLI prints it and exits
non-zero. Steps add their own subclasses here so that callers (CLI, components, pipeline) can catch
by category without importing the step's module.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """Base class for all errors raised by transferkit on bad input or failed gates."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line only: multi-line messages break log parsers and the KFP UI's error field.
        super().__init__(" ".join(str(message).split()))


class ConfigError(TransferkitError):
    """A step configuration value is invalid (raised from a config's ``__post_init__``)."""


class DataError(TransferkitError):
    """An input dataset is missing, unreadable or does not satisfy the task's schema."""


class DatasetNotFoundError(DataError):
    """A dataset URI points to nothing (missing file, unknown builtin, missing S3 object)."""


class SchemaError(DataError):
    """Columns, types or values of a dataset do not match what the task requires."""


class PreparedDataError(DataError):
    """A prepared dataset directory is incomplete or inconsistent."""


class AssetError(TransferkitError):
    """An offline asset (packaged model or dataset) could not be fetched from the package registry."""


class ModelError(TransferkitError):
    """A model cannot be resolved or loaded, or it does not fit the data."""


class UnsafeModelError(ModelError):
    """Loading would execute untrusted code (pickle weights, ``trust_remote_code``) without consent."""


class TrainingError(TransferkitError):
    """Training failed or cannot start with the given inputs."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, partial or corrupted."""


class EvaluationError(TransferkitError):
    """Evaluation cannot run on the given model and data."""


class GateFailedError(TransferkitError):
    """A quality gate (metric threshold, forgetting budget, parity, accuracy drop) did not pass."""

    exit_code = 3


class ForgettingGateError(GateFailedError):
    """The fine-tuned model lost more source-task ability than the budget allows."""


class ExportError(TransferkitError):
    """ONNX export or quantization failed."""


class ParityError(GateFailedError):
    """ONNX Runtime outputs differ from PyTorch beyond tolerance, or predicted labels disagree."""


class QuantizationGateError(GateFailedError):
    """A quantized variant lost more accuracy than allowed and ``on_drop='fail'`` was requested."""


class ServingError(TransferkitError):
    """The Triton model repository, server or deployment failed."""


class ServerUnavailableError(ServingError):
    """A server (Triton, Kubernetes API, KFP API, S3) could not be reached after bounded retries."""


class DeploymentError(ServingError):
    """A deployment did not complete; the previous version remains in service."""


class AuthError(ServingError):
    """Credentials are missing or were rejected (restricted API key, S3, Git)."""


class PipelineError(TransferkitError):
    """Compiling, running or submitting the KFP pipeline failed."""


class MonitorError(TransferkitError):
    """A monitoring baseline, record or feedback file is missing or malformed."""


class TuneError(TransferkitError):
    """A hyperparameter search cannot run or produced no usable trial."""


class RegistryError(TransferkitError):
    """The Kubeflow Model Registry rejected a call, could not be reached, or has no such model/version."""
