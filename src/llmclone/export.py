"""`llmclone export`: a clone as a standalone model.

- `--merged DIR`: the base model with the LoRA adapter merged in, a normal Hugging Face checkpoint
  (safetensors + tokenizer). Needs only the clone and its base model.
- `--gguf FILE`: an f16 GGUF for llama.cpp / Ollama, written from the merged weights (models/gguf_export.py):
  Llama, Mistral, Qwen2 and Qwen3 bases from their config and tokenizer, Gemma-family bases from the GGUF they
  came from (the embedded model, a `.gguf` base). For other bases, export `--merged` and run llama.cpp's
  `convert_hf_to_gguf.py` on that directory.

The prompt format the clone expects is written next to the export (`llmclone-prompt.txt`): without it a
runtime would not know how to talk to the clone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmclone.clone import LLMClone
from llmclone.dataset.io import atomic_dir, private_umask, write_json
from llmclone.errors import UserError
from llmclone.models.chat_format import ChatFormat


def merged_model(clone: LLMClone) -> Any:
    """The clone's weights with the adapter folded in (LLMClone.load merges by default)."""
    model = clone.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def prompt_help(fmt: ChatFormat) -> str:
    if fmt.kind == "template":
        return "The clone answers as the assistant of the model's own chat template.\n"
    return (f"Prompt format (transcript): <bos>{fmt.user_label}: their message\\n{fmt.clone_label}: your reply<eos>\\n"
            f"... ending with '{fmt.clone_label}: '. Stop at <eos> or at a line starting with '{fmt.user_label}:'.\n")


def export_merged(clone_dir: str | Path, out: str | Path, force: bool = False, device: str = "auto") -> Path:
    clone = LLMClone.load(clone_dir, device=device, load="full")  # merged on the GPU when there is one
    model = merged_model(clone)
    with atomic_dir(out, force, what="export") as tmp:
        with private_umask():
            model.save_pretrained(tmp, safe_serialization=True)
            clone.tokenizer.save_pretrained(tmp)
            (tmp / "llmclone-prompt.txt").write_text(prompt_help(clone.chat_format), encoding="utf-8")
        write_json(tmp / "clone.json", clone.manifest)
    return Path(out)


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def export_gguf(clone_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """An f16 GGUF of the merged clone (models/gguf_export.py), with its prompt format beside it."""
    from llmclone.models.gguf_export import merged_clone, write_gguf

    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another file or pass --force to replace it.")
    if out.exists() and not _is_gguf(out):
        raise UserError(f"{out} is not a GGUF file; --force replaces only an earlier export: choose another file.")
    model, tokenizer, manifest = merged_clone(clone_dir)
    write_gguf(model, tokenizer, manifest.get("base_model", {}), out)
    with private_umask():
        out.with_name(out.name + ".prompt.txt").write_text(prompt_help(ChatFormat.from_json(manifest["chat_format"])),
                                                          encoding="utf-8")
    return out
