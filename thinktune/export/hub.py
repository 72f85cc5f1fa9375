"""Push an exported folder (adapter, merged, GGUF, …) to the Hugging Face Hub, or list what would be sent.

    thinktune export --run-dir runs/quickstart --format gguf --push-to-hub me/quickstart-gguf --dry-run

One commit with a `CommitOperationAdd` per file of the folder (huggingface_hub's default ignore patterns applied:
`.git/`, `.cache/huggingface/`), after `create_repo(exist_ok=True)` and, for `--revision`, `create_branch`. The files
are listed by `plan_push`, so `--dry-run` prints exactly the operations a real push commits. `HfApi.create_commit`
is called rather than `upload_folder`: with hf_xet installed, `upload_folder` bypasses `create_commit` for its own
multi-commit pipeline, which would make what is sent depend on the installed extras.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from thinktune.errors import EnvironmentProblem, UserError


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    files: list[tuple[str, int]]  # (path in the repo, bytes)
    private: bool = False
    revision: str | None = None  # None: the default branch (main)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> list[str]:
        """The dry-run listing: repo, revision, visibility, then one line per file with its size."""
        lines = [
            f"would push {self.folder} to https://huggingface.co/{self.repo_id} "
            f"(revision {self.revision or 'main'}, {'private' if self.private else 'public'}):"
        ]
        width = max((len(f"{size:,}") for _, size in self.files), default=1)
        lines += [f"  {size:>{width},} B  {path}" for path, size in self.files]
        lines.append(f"{len(self.files)} files, {self.total_bytes:,} bytes; nothing sent (--dry-run)")
        return lines


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub '{repo_id}': not a Hub repo id (org/name): {str(e).splitlines()[0]}") from e


def check_can_push(dry_run: bool, api: HfApi | None = None) -> None:
    """Fail before exporting when a real push cannot happen: offline mode, or no token."""
    if dry_run:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or constants.is_offline_mode():
        raise EnvironmentProblem("HF_HUB_OFFLINE is set: not pushing to the Hub (unset it, or use --dry-run)")
    if not ((api.token if api else None) or get_token()):
        raise EnvironmentProblem(
            "pushing to the Hub needs a token: run `hf auth login` (huggingface-cli login) or set HF_TOKEN "
            "(or use --dry-run)"
        )


def plan_push(folder: Path, repo_id: str, private: bool = False, revision: str | None = None) -> PushPlan:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: nothing to push (not a directory)")
    relative = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(relative, ignore_patterns=DEFAULT_IGNORE_PATTERNS)
    return PushPlan(folder, repo_id, [(p, (folder / p).stat().st_size) for p in kept], private, revision)


def push_folder(plan: PushPlan, api: HfApi | None = None, commit_message: str | None = None) -> str:
    """Create the repo (and branch), commit every planned file in one commit; returns the commit URL."""
    api = api or HfApi()
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(plan.folder / p)) for p, _ in plan.files]
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True, repo_type="model")
        info = api.create_commit(
            plan.repo_id,
            operations=operations,
            commit_message=commit_message or f"thinktune export of {plan.folder.name}",
            revision=plan.revision,
            repo_type="model",
        )
    except HfHubHTTPError as e:
        raise UserError(f"push to {plan.repo_id} failed: {str(e).splitlines()[0]}") from e
    return info.commit_url
