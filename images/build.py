"""Build (and optionally push) the transferkit images: what ``make images`` runs.

    .venv/bin/python images/build.py                 # lint, then build runtime, runtime-cuda, triton
    .venv/bin/python images/build.py --push          # ... and push them
    .venv/bin/python images/build.py --dry-run       # print the commands, build nothing
    .venv/bin/python images/build.py --only triton   # one image

Names and the tag come from ``transferkit.images`` (registry ``$TRANSFERKIT_IMAGE_REGISTRY``, tag = the
package version), the one place the Helm chart, the kustomize tree and the KFP components agree with.
The builder is the first that works of: ``docker`` with a reachable daemon, ``podman``, ``buildah``.

Exit codes: 0 built (or dry run), 1 a lint or build command failed, 2 no image builder exists on this
machine. "No builder" is an error on purpose: ``make images`` is only run to produce images, and a CI
job that publishes them must not pass having built nothing.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transferkit import images  # noqa: E402  (after the src path for runs without an install)

EXIT_NO_BUILDER = 2


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile and the reference it is tagged with."""

    name: str
    dockerfile: Path
    reference: str


SPECS = (
    ImageSpec("runtime", ROOT / "images" / "runtime" / "Dockerfile", images.RUNTIME_IMAGE),
    ImageSpec("runtime-cuda", ROOT / "images" / "runtime-cuda" / "Dockerfile", images.RUNTIME_CUDA_IMAGE),
    ImageSpec("triton", ROOT / "images" / "triton" / "Dockerfile", images.TRITON_IMAGE),
)


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_builder() -> str | None:
    """Return ``docker``, ``podman`` or ``buildah`` (the first that can build here), else ``None``."""
    if shutil.which("docker") and _works(["docker", "info", "--format", "{{.ServerVersion}}"]):
        return "docker"
    if shutil.which("podman") and _works(["podman", "info"]):
        return "podman"
    if shutil.which("buildah") and _works(["buildah", "version"]):
        return "buildah"
    return None


def _revision() -> str:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_commands(builder: str, specs: tuple[ImageSpec, ...], *, push: bool) -> list[list[str]]:
    """The commands that build (and push) ``specs`` with ``builder``, context = the repository root."""
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    build_args = {"VERSION": images.TAG, "REVISION": _revision(), "CREATED": created}
    commands = []
    for spec in specs:
        build = [builder, "build"] if builder != "buildah" else ["buildah", "build", "--layers"]
        for key, value in build_args.items():
            build += ["--build-arg", f"{key}={value}"]
        build += ["--file", str(spec.dockerfile.relative_to(ROOT)), "--tag", spec.reference, "."]
        commands.append(build)
        if push:
            commands.append([builder, "push", spec.reference])
    return commands


def lint_command(specs: tuple[ImageSpec, ...]) -> list[str] | None:
    """The hadolint command for ``specs`` (``None`` when hadolint is not installed)."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        return None
    config = ROOT / "images" / "hadolint.yaml"
    return [hadolint, "--config", str(config), *(str(spec.dockerfile) for spec in specs)]


def main(argv: list[str] | None = None) -> int:
    """Lint and build the selected images; return the process exit code."""
    parser = argparse.ArgumentParser(description="Build the transferkit images.")
    parser.add_argument("--only", choices=[spec.name for spec in SPECS], action="append",
                        help="build only this image (repeatable)")
    parser.add_argument("--push", action="store_true", help="push after building")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; build nothing")
    parser.add_argument("--builder", choices=["docker", "podman", "buildah"], help="skip detection")
    args = parser.parse_args(argv)
    specs = tuple(spec for spec in SPECS if not args.only or spec.name in args.only)

    lint = lint_command(specs)
    builder = args.builder or ("docker" if args.dry_run else find_builder())
    if builder is None:
        sys.stderr.write(
            "images: no image builder found (docker with a running daemon, podman or buildah); nothing was "
            "built. Install one, or build in CI from images/*/Dockerfile with the repository root as context.\n"
        )
        return EXIT_NO_BUILDER
    commands = ([lint] if lint else []) + build_commands(builder, specs, push=args.push)
    for cmd in commands:
        sys.stdout.write("+ " + shlex.join(cmd) + "\n")
        sys.stdout.flush()
        if args.dry_run:
            continue
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
            sys.stderr.write(f"images: command failed: {shlex.join(cmd)}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
