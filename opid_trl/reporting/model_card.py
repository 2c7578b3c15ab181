"""The model card a run writes: TRL's card, completed with what only OPID knows.

TRL names the base model only when it is a hub id (a local folder gives "a fine-tuned version of
[None]") and knows nothing of the environment or the skills. A reader of the card needs the base
model, the method that actually ran (OPID, or GRPO when no skill term was added), the environment
and the skill extractor with its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

_MISSING_BASE = "a fine-tuned version of [None](https://huggingface.co/None)"


def base_model_name(name_or_path: str | None) -> str | None:
    """A hub id as it is; a local folder by its own name (no path of the machine that trained it)."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    return path.name if path.is_dir() else name_or_path


def run_facts(method: str, base_model: str | None, environment: str | None, extractor: str | None,
              settings: Mapping[str, Any]) -> dict[str, Any]:
    """The card's "OPID setting" entries, in order."""
    return {"method": method, "base model": base_model or "unknown", "environment": environment or "none (single-turn)",
            "skill extractor": extractor or "none", **settings}


def complete_model_card(card: Path, facts: Mapping[str, Any]) -> None:
    """Name the base model where TRL could not, and add the run's OPID setting to ``card``."""
    if not card.exists():
        return
    text = card.read_text()
    base = facts.get("base model")
    if _MISSING_BASE in text and base and base != "unknown":
        text = text.replace(_MISSING_BASE, f"a fine-tuned version of `{base}`")
    section = "\n## OPID setting\n\n" + "".join(f"- {name}: {value}\n" for name, value in facts.items())
    if "\n## OPID setting\n" not in text:
        text = text.rstrip() + "\n" + section
    card.write_text(text)
