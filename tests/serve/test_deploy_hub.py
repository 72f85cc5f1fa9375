"""`thinktune deploy` of a run whose base model is a Hub id: the cached snapshot goes into the build context."""

from __future__ import annotations

import shutil

from tests.hub_cache import add_to_hub_cache
from thinktune.config import load_config, to_yaml, validate
from thinktune.serve.deploy import write_deployment


def test_deploy_ships_the_cached_snapshot_of_a_hub_model(tmp_path, tiny_base, tiny_adapter, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache(cache, "tiny-org/base", tiny_base, ref="v1")
    cfg = validate({"name": "hub-run", "model": {"name_or_path": "tiny-org/base", "revision": "v1"}})
    run = tmp_path / "runs" / "hub-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    shutil.copytree(tiny_adapter, run / "adapter")

    out = tmp_path / "deploy"
    write_deployment(run, out)
    model = out / "model"
    assert (model / "config.json").is_file() and not (model / "config.json").is_symlink()  # contents, not links
    assert "COPY model/ /app/model/" in (out / "Dockerfile").read_text()
    served = load_config(out / "serve.yaml").model
    assert (served.name_or_path, served.revision) == ("/app/model", None)
