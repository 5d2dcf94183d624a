"""`python -m firellava.serve [hydra overrides]` (or `make serve ARGS="..."`): serve a checkpoint with the `serve`
config, on the engine `engine/serve` names.

python -m firellava.serve                          # the demo's finetuned toy model on 127.0.0.1:8000
python -m firellava.serve serve.model=/ckpt serve.port=9000 serve.api_key=secret engine/serve=vllm
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from firellava.config import CONF_DIR, build
from firellava.core.allocator import restart_with_tuned_malloc
from firellava.serve.app import run_server
from firellava.serve.settings import ServerSettings


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    settings: ServerSettings = build(cfg.serve)
    if not Path(settings.model).exists() and settings.engine.backend == "transformers":
        raise SystemExit(
            f"serve.model={settings.model}: no such checkpoint directory (run the pipeline first)"
        )
    run_server(settings)


if __name__ == "__main__":
    restart_with_tuned_malloc()
    sys.exit(main())
