"""transferkit: Kubeflow-native transfer learning from a pre-trained model to a live Triton endpoint."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transferkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
