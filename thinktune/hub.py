"""Models and datasets named by their Hugging Face Hub id (`org/name`), through huggingface_hub's own cache.

The cache is the standard one (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), so a model another
tool downloaded is found, and one thinktune downloads is found by the others. Offline (HF_HUB_OFFLINE=1, or the CLI's
`--offline`, which sets it for the process and its children) reads only that cache. Both are read from the
environment at each call, not from huggingface_hub's constants, which it fixes when it is first imported: the cache
folder and `local_files_only` are passed explicitly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Hub ids: `org/name` with letters, digits, `-`, `_`, `.` (huggingface_hub's rule, without the length limit).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE = {"1", "on", "yes", "true"}
# What from_pretrained reads from a model repo: weights as safetensors, configs, tokenizer files, chat templates,
# and the code of trust_remote_code models; not .bin/.pth/.h5 duplicates or the original checkpoints.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]


class HubMissing(Exception):
    """A repo that is neither in the cache nor downloadable; the message is one line ending in the cache folder."""


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # huggingface_hub's older name, still honoured by it
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def go_offline() -> None:
    """Offline for this process and every process it starts (torchrun workers, `accelerate launch`)."""
    for var in OFFLINE_VARS:
        os.environ[var] = "1"


def is_hub_id(ref: str) -> bool:
    """`org/name`, not a path that exists here (a local folder `org/name` wins, as in transformers)."""
    return bool(HUB_ID.match(ref)) and not Path(ref).exists()


def snapshot(repo_id: str, revision: str | None, repo_type: str = "model", allow: list[str] | None = None) -> Path:
    """The cached snapshot folder of `repo_id` at `revision` (branch, tag or commit; None = main), downloaded
    first when online. Raises HubMissing with one line naming the id, the revision and the cache folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache, local_only = hub_cache_dir(), offline()
    where = f"'{repo_id}' (revision {revision or 'main'}, {repo_type} cache {cache})"
    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=cache,
            local_files_only=local_only,
            allow_patterns=allow,
        )
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1 or --offline)" if local_only else "and the Hub is not reachable"
        raise HubMissing(f"{repo_type} {where} is not in the cache, {why}") from None
    except GatedRepoError:
        raise HubMissing(f"{repo_type} {where} is gated: accept its terms on the Hub, then `hf auth login`") from None
    except RevisionNotFoundError:
        raise HubMissing(f"{repo_type} {where}: no such revision on the Hub") from None
    except RepositoryNotFoundError:
        raise HubMissing(f"{repo_type} {where}: no such repo on the Hub (private? `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubMissing(f"{repo_type} {where}: download failed ({type(e).__name__}: {e})".splitlines()[0]) from None
    return Path(path)


def cached_repos(repo_type: str | None = None) -> list[tuple[str, str, int, list[str]]]:
    """(repo id, type, size on disk in bytes, revisions as `ref@commit[:8]` or `commit[:8]`) for each cached repo."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo_type and repo.repo_type != repo_type:
            continue
        revs = []
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            short = rev.commit_hash[:8]
            revs += [f"{ref}@{short}" for ref in sorted(rev.refs)] or [short]
        out.append((repo.repo_id, repo.repo_type, repo.size_on_disk, revs))
    return out
