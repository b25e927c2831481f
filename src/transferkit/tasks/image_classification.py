"""Image classification: one label per image, a CNN or vision transformer on ``pixel_values``.

Data: PNG ``image`` bytes with ``width``, ``height``, ``mode`` and an integer ``label`` into ``labels.json``.
Models: transferkit's EfficientNet-Lite or a transformers ``*ForImageClassification`` directory. Export:
float32 ``pixel_values`` ``[batch, 3, S, S]`` with ``preprocessor.json``; static QDQ int8 on cpu.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from transferkit.errors import ConfigError
from transferkit.tasks.base import Task

logger = logging.getLogger(__name__)

IMAGE_CLASSIFICATION = "image-classification"
# Data-prep options that only text data has.
TEXT_ONLY_PREP_FIELDS = ("text_pair_column", "group_column", "split_column")


class ImageClassification(Task):
    """Classification of images."""

    name: ClassVar[str] = IMAGE_CLASSIFICATION
    modality: ClassVar[str] = "image"
    item_unit: ClassVar[str] = "img"
    required_columns: ClassVar[tuple[str, ...]] = ("image", "label", "width", "height", "mode")
    model_noun: ClassVar[str] = "an image classifier"
    classifier_noun: ClassVar[str] = "an image classifier"
    preprocessing_kind: ClassVar[str] = "image"
    wrong_model_hint: ClassVar[str | None] = ("image data needs an image classifier (e.g. one fine-tuned from "
                                              "efficientnet-lite0)")
    # CNNs on cpu: static QDQ int8 is the int8 variant; dynamic int8 is built, gated and reported for comparison
    # but never recommended: it runs convolutions as ConvInteger, measured ~50x slower than fp32 and 19 points
    # less accurate on EfficientNet-Lite0 (digits, 32 px, 2 threads).
    forgetting_mitigation: ClassVar[bool] = False
    model_framework: ClassVar[str] = "pytorch"
    export_variants: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("qdq", "int8"), "gpu": ("fp16", "qdq")}
    export_cpu_preference: ClassVar[str] = "qdq"
    export_assets: ClassVar[tuple[str, ...]] = ("preprocessor.json",)

    def owns_model_config(self, config: dict[str, Any]) -> bool:
        """transferkit-saved image classifiers and transformers ``*ForImageClassification`` configs."""
        from transferkit.models.vision import ARCHITECTURE_KEY, LITE_ARCHITECTURES, TRANSFORMERS

        if config.get(ARCHITECTURE_KEY) in (*LITE_ARCHITECTURES, TRANSFORMERS):
            return True
        return any(str(name).endswith("ForImageClassification") for name in config.get("architectures") or [])

    def check_prep_config(self, config: Any) -> None:
        """Text pairs, slice groups and split columns exist only for text data; generative options do not apply."""
        from transferkit.data.prepare import GENERATIVE_PREP_FIELDS

        for name in (*TEXT_ONLY_PREP_FIELDS, *GENERATIVE_PREP_FIELDS):
            if getattr(config, name):
                raise ConfigError(f"{name}: not supported for task {self.name}; expected none")

    def prep_columns(self, config: Any) -> dict[str, str]:
        """``image`` and ``label``."""
        return {"image": config.image_column, "label": config.label_column}

    def prepare(self, config: Any) -> Any:
        """Decode, validate, re-encode as PNG, split and profile (sizes and modes)."""
        from transferkit.data.image_prep import prepare_images

        return prepare_images(config)

    def summary_rows(self, result: Any, config: Any) -> list[tuple[str, str]]:
        """Width and height ranges and the stored image modes."""
        width, height = result.image_size["width"], result.image_size["height"]
        return [("width min / p50 / max (px)", f"{width['min']:g} / {width['p50']:g} / {width['max']:g}"),
                ("height min / p50 / max (px)", f"{height['min']:g} / {height['p50']:g} / {height['max']:g}"),
                ("modes", ", ".join(f"{mode} ({count})" for mode, count in result.modes.items()))]

    def training(self, config: Any, dataset: Any, resolved: Any) -> Any:
        """The image side of the training recipe (preprocessing, augmentation, stage freezing, feature cache)."""
        from transferkit.train.config import reject_generation_options
        from transferkit.train.image_task import image_side_for

        reject_generation_options(config, self.name)
        return image_side_for(config, dataset, resolved)

    def evaluation_inputs(self, dataset: Any, split: str, cfg: Any) -> Any:
        """Encoded images of the split; predictions by the image classifier."""
        from transferkit.evaluate.inputs import ImageInputs

        return ImageInputs.read(dataset, split, cfg)

    def source_set(self, reference: str, dataset: Any, labels: list[str]) -> Any:
        """Labelled test images."""
        from transferkit.evaluate.sources import images_from_rows

        return images_from_rows(reference, dataset.images("test"), labels)

    def export_side(self, config: Any, dataset: Any) -> Any:
        """Load the classifier and its preprocessing (``max_length`` does not apply)."""
        from transferkit.export.image import load_exportable_image
        from transferkit.export.tasks import ImageTask

        if config.max_length is not None:
            logger.warning("max_length=%d applies to text models; ignored for image model %s", config.max_length,
                           config.model_dir)
        exportable = load_exportable_image(config.model_dir, dataset.labels, config.data_dir,
                                           allow_pickle=config.allow_pickle,
                                           trust_remote_code=config.trust_remote_code)
        return ImageTask(exportable, dataset, config)

    def report_parity(self, report: Any, result: Any, config: Any) -> None:
        """Parity over batch sizes of fixed-size ``pixel_values``."""
        report.paragraph(
            f"All batch sizes within atol {config.atol:g} with identical predicted labels; largest difference "
            f"{result.parity_max_abs_diff:.3g}. Opset {result.opset}, input pixel_values {result.input_shape} "
            "(float32, dynamic batch)."
        )
        report.table(
            ["batch", "pixel_values shape", "max abs logit diff", "labels agree"],
            [[c.batch_size, "x".join(str(d) for d in c.input_shape), f"{c.max_abs_diff:.3g}", c.labels_agree]
             for c in result.parity_cases],
        )

    def sample_request(self, http_url: str, model_name: str, *, dataset_dir: Any, export_dir: Any, work_dir: Any,
                       sample_text: str) -> dict[str, Any]:
        """The first test image of the prepared data (saved as ``work_dir/sample.png``): label, probabilities."""
        from transferkit.serve.sample import classify, first_test_image

        image, expected, path = first_test_image(dataset_dir, work_dir)
        return {**classify(http_url, model_name, image=image), "expected": expected, "image": str(path)}

    def monitor_items(self, dataset: Any, split: str) -> list[Any]:
        """Encoded image bytes."""
        return list(dataset.images(split))

    def monitor_inputs(self, export_dir: Any) -> Any:
        """The served image preprocessing; features width, height and brightness."""
        from transferkit.monitor.inputs import ImageMonitorInputs

        return ImageMonitorInputs(export_dir)

    def write_serving_monitor(self, exported: Any, name: str, root: Any, version: int, options: Any) -> bool:
        """The local entry model that decodes, classifies and samples embeddings and image features."""
        from transferkit.serve.local_image import write_image_entry_local

        write_image_entry_local(exported, name, root, version, options)
        return True


TASK = ImageClassification()
