"""GitOps deploy: write the new model version into a values file and commit (and push) it.

Argo CD or Flux then roll the Helm release out. The values file is YAML; the mapping at ``key`` (a
dotted path, default ``model``) gets ``name``, ``version`` and ``repositoryUri``. Pushing uses the
credentials the environment provides to git (credential helper, ``GIT_ASKPASS``, SSH agent); git is
never allowed to prompt. When the push is rejected, the local commit is undone with
``git reset --keep`` (other local changes survive) and the caller unpublishes the version.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transferkit.errors import AuthError, ConfigError, DeploymentError

logger = logging.getLogger(__name__)


@dataclass
class GitCommit:
    """A commit made by the gitops deploy."""

    sha: str
    branch: str
    message: str
    pushed_to: str | None


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS=os.environ.get("GIT_ASKPASS", "/bin/false"))
    # Fall back to a neutral identity only when none is configured (CI images often have none).
    identity = []
    if not _has_config(repo, "user.email"):
        identity = ["-c", "user.name=transferkit", "-c", "user.email=transferkit@localhost"]
    result = subprocess.run(["git", *identity, "-C", str(repo), *args], capture_output=True, text=True,
                            env=env, check=False)
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        raise DeploymentError(f"{repo}: git {args[0]} failed: {last}")
    return result


def _has_config(repo: Path, key: str) -> bool:
    result = subprocess.run(["git", "-C", str(repo), "config", "--get", key], capture_output=True, text=True,
                            check=False)
    return result.returncode == 0 and bool(result.stdout.strip())


def set_by_path(document: dict[str, Any], dotted: str, value: dict[str, Any]) -> None:
    """Merge ``value`` into the mapping at ``dotted`` (creating mappings on the way).

    Raises:
        ConfigError: A segment on the path exists but is not a mapping.
    """
    node = document
    for part in dotted.split("."):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"values_key: {dotted!r}: {part!r} is a {type(child).__name__}, not a mapping")
        node = child
    node.update(value)


def update_values_file(path: Path, key: str, values: dict[str, Any]) -> bool:
    """Write ``values`` at ``key`` into a YAML file; return whether the file changed.

    Raises:
        ConfigError: The file is not a YAML mapping.
    """
    document: Any = {}
    original = path.read_text(encoding="utf-8") if path.is_file() else ""
    if original.strip():
        try:
            document = yaml.safe_load(original)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    set_by_path(document, key, values)
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    if text == original:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def commit_values(repo: Path, values_file: str, key: str, values: dict[str, Any], message: str, *,
                  remote: str | None = None, branch: str | None = None) -> GitCommit:
    """Update the values file, commit it, and push when ``remote`` is given.

    Raises:
        ConfigError: ``repo`` is not a git work tree, or the values file has uncommitted changes.
        AuthError: The remote rejected the credentials.
        DeploymentError: The push was rejected (local commit undone) or git failed.
    """
    repo = Path(repo)
    if not (repo / ".git").exists():
        raise ConfigError(f"git_repo: {repo} is not a git work tree")
    target = (repo / values_file).absolute()
    if repo.absolute() not in target.parents:
        raise ConfigError(f"values_file: {values_file!r} is outside the repository {repo}")
    rel = target.relative_to(repo.absolute()).as_posix()
    status = _git(repo, "status", "--porcelain", "--", rel).stdout.strip()
    if status and not status.startswith("??"):
        raise ConfigError(f"values_file: {rel} has uncommitted changes in {repo}; commit or stash them first")
    current = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch and branch != current:
        _git(repo, "checkout", branch)
        current = branch
    if not update_values_file(target, key, values):
        raise DeploymentError(f"{rel}: already at {values} (nothing to commit)")
    _git(repo, "add", "--", rel)
    _git(repo, "commit", "-m", message, "--", rel)
    sha = _git(repo, "rev-parse", "HEAD").stdout.strip()
    if remote:
        result = _git(repo, "push", "--porcelain", remote, f"HEAD:refs/heads/{current}", check=False)
        if result.returncode != 0:
            _git(repo, "reset", "--keep", "HEAD~1")
            lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "rejected" in ln or "denied" in ln.lower()), lines[-1] if lines
                          else "no output")
            if any(w in reason.lower() for w in ("authentication", "permission denied", "could not read username")):
                raise AuthError(f"git push to {remote} failed: {reason}; local commit undone")
            raise DeploymentError(f"git push to {remote} rejected: {reason}; local commit undone")
    logger.info("Committed %s (%s) to %s%s", rel, sha[:12], current, f", pushed to {remote}" if remote else "")
    return GitCommit(sha=sha, branch=current, message=message, pushed_to=remote)
