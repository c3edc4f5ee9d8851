"""config.json of models the stacks can size without downloading them (architecture fields only).

File name: the Hugging Face id with '/' as '--'. For another model, download its config.json
(`huggingface-cli download ORG/NAME config.json`) and point the stack's `modelConfigFile` at it.
"""

from __future__ import annotations

from pathlib import Path

CATALOG_DIR = Path(__file__).resolve().parent


def catalog_config(model_id: str) -> Path | None:
    path = CATALOG_DIR / (model_id.replace("/", "--") + ".json")
    return path if path.is_file() else None


def catalog_models() -> list[str]:
    return sorted(p.stem.replace("--", "/") for p in CATALOG_DIR.glob("*.json"))
