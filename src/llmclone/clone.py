"""LLMClone: a trained clone, loaded from its directory, answering as its owner.

Also the original library's API: `CloneConfig`, `LLMClone(config)`, `train_clone(clone, dataset)`,
`clone.sample(prompt)`, `clone.save(path)`, `clone.add_adapters(path)`.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmclone import placeholders
from llmclone.config import TrainConfig
from llmclone.errors import UserError
from llmclone.manifest import read_manifest
from llmclone.models.base_models import BaseModel, resolve
from llmclone.models.chat_format import ChatFormat

DEFAULT_SAMPLING = {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 80}
CONTEXT_TOKENS = 1024  # history beyond this is trimmed, oldest first


@dataclass
class CloneConfig:
    """The original library's settings object; extra fields are any `TrainConfig` setting."""

    model_name: str = "embedded"
    quantized: bool = False
    output_dir: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        return TrainConfig(model=self.model_name, quantize="4bit" if self.quantized else None, **self.settings)


class LLMClone:
    def __init__(self, config: CloneConfig | None = None) -> None:
        self.config = config or CloneConfig()
        self.clone_dir: Path | None = None
        self.manifest: dict[str, Any] | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._stops: Any = None
        self._llama: Any = None  # the llama.cpp engine, when loaded with engine="llama.cpp"
        self.chat_format = ChatFormat()

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, clone_dir: str | Path, merge: bool = True, engine: str = "torch", quant: str = "q8_0",
             vocabulary: str = "shortlist") -> LLMClone:
        """Load a clone directory: its base model (resolved again on this machine) plus its adapter.

        `merge=True` folds the adapter into the weights (replies are faster: an unmerged LoRA costs a
        third or more per token); `merge=False` keeps it apart, so `reply(base=True)` can switch it off.
        `engine="llama.cpp"` replies with llama.cpp on the clone exported to a `quant` GGUF (built once and
        cached; needs llama-cpp-python): 2-3x faster on a CPU, at slightly lower precision; its output layer
        scores only the tokens the clone uses (`vocabulary="shortlist"`, see models/shortlist.py) unless
        `vocabulary="full"`.
        """
        manifest = read_manifest(clone_dir)
        clone = cls(CloneConfig(model_name=manifest["base_model"]["spec"]))
        clone.clone_dir, clone.manifest = Path(clone_dir), manifest
        clone.chat_format = ChatFormat.from_json(manifest["chat_format"])
        base = _base_for(manifest)
        if engine == "llama.cpp":
            from transformers import AutoTokenizer

            from llmclone.models.llamacpp import LlamaCppEngine, clone_gguf, require

            require()  # before any export work: say what to install
            clone._tokenizer = AutoTokenizer.from_pretrained(base.path)
            if vocabulary not in ("shortlist", "full"):
                raise UserError(f"unknown vocabulary {vocabulary!r}; use 'shortlist' or 'full'.")
            gguf = clone_gguf(clone_dir, quant, clone._tokenizer if vocabulary == "shortlist" else None)
            clone._llama = LlamaCppEngine(gguf, n_ctx=CONTEXT_TOKENS + 256, tokenizer=clone._tokenizer)
        elif engine == "torch":
            clone._load(base, Path(clone_dir) / "adapter", merge)
        else:
            raise UserError(f"unknown engine {engine!r}; use 'torch' or 'llama.cpp'.")
        return clone

    def _load(self, base: BaseModel, adapter: Path | None, merge: bool = False) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        self._tokenizer = AutoTokenizer.from_pretrained(base.path)
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
            if merge:
                model = model.merge_and_unload()
        self._model = model.eval()

    def add_adapters(self, path: str | Path) -> None:
        """Put a trained LoRA adapter (a directory with adapter_config.json) on the base model."""
        from peft import PeftModel

        path = Path(path)
        if (path / "adapter").is_dir():
            path = path / "adapter"
        if not (path / "adapter_config.json").is_file():
            raise UserError(f"{path} holds no LoRA adapter (adapter_config.json); give a clone or adapter directory.")
        if self._model is None or (self.clone_dir is not None and not hasattr(self._model, "peft_config")):
            self._load(resolve(self.config.model_name), None)  # a merged clone's weights are not the base
        base = self._model.get_base_model() if hasattr(self._model, "get_base_model") else self._model
        self._model = PeftModel.from_pretrained(base, str(path)).eval()

    def save(self, path: str | Path) -> None:
        """Save the adapter (and, for a loaded clone, its manifest) to a directory."""
        if self._model is None or not hasattr(self._model, "peft_config"):
            raise UserError("nothing to save: train the clone, or load one with merge=False.")
        path = Path(path)
        self._model.save_pretrained(str(path / "adapter"))
        if self.manifest is not None:
            (path / "clone.json").write_text(json.dumps(self.manifest, ensure_ascii=False, indent=2))

    # -- replying --------------------------------------------------------------------------------------
    def reply(self, history: list[dict[str, Any]], keep_media_tags: bool = False, base: bool = False,
              on_message: Callable[[str], None] | None = None, **sampling: Any) -> list[str]:
        """The owner's next messages after `history` ([{"role": "user"|"assistant", "content": ...}, ...]).

        The merged turn is split back into messages, one per line. `on_message` receives each message as
        soon as it is complete, while the rest is still being generated. `base=True` answers with the base
        model (the adapter switched off), for comparison.
        """
        def render(line: str) -> str:
            return placeholders.render_outgoing(line, keep_media_tags)

        streamer = None
        if on_message is not None:
            def emit(line: str) -> None:
                if render(line):
                    on_message(render(line))

            streamer = _LineStreamer(self._tokenizer, emit, self.chat_format.stop_strings())
        text = self.generate(history, base=base, streamer=streamer, **sampling)
        if streamer is not None:
            streamer.flush()
        return [m for m in map(render, text.split("\n")) if m]

    def generate(self, history: list[dict[str, Any]], base: bool = False, streamer: Any = None,
                 **sampling: Any) -> str:
        import contextlib

        import torch

        if self._model is None and self._llama is None:
            raise UserError("the clone has no model yet: train it or load a clone directory.")
        tok, fmt = self._tokenizer, self.chat_format
        history = [{"role": m["role"], "content": m["content"]} for m in history]
        ids = fmt.prompt(tok, history)
        while len(ids) > CONTEXT_TOKENS and len(history) > 1:  # trim the oldest turns first
            history = history[1:]
            ids = fmt.prompt(tok, history)
        params = DEFAULT_SAMPLING | sampling
        do_sample = params.get("temperature", 0) > 0
        if self._llama is not None:
            return self._generate_llama(ids[-CONTEXT_TOKENS:], params, base, streamer)
        if base and not hasattr(self._model, "disable_adapter"):
            raise UserError("this clone was loaded with its adapter merged; load it with merge=False to compare "
                            "with the base model.")
        off = self._model.disable_adapter() if base else contextlib.nullcontext()
        with torch.inference_mode(), off:
            out = self._model.generate(
                torch.tensor([ids[-CONTEXT_TOKENS:]]), do_sample=do_sample,
                temperature=params["temperature"] if do_sample else None, top_p=params["top_p"] if do_sample else None,
                repetition_penalty=params["repetition_penalty"], max_new_tokens=params["max_new_tokens"],
                min_new_tokens=params.get("min_new_tokens"),
                eos_token_id=fmt.stop_ids(tok), pad_token_id=tok.pad_token_id or tok.eos_token_id,
                stopping_criteria=self._stop_criteria(), streamer=streamer,
            )
        text = tok.decode(out[0, len(ids[-CONTEXT_TOKENS:]):], skip_special_tokens=True)
        for stop in fmt.stop_strings():  # never write the other person's lines
            text = text.split(stop)[0]
        return text.strip()

    def _generate_llama(self, ids: list[int], params: dict[str, Any], base: bool, streamer: Any) -> str:
        import torch

        if base:
            raise UserError("the llama.cpp engine runs the merged clone only; use the torch engine to compare with the base.")
        tok, fmt = self._tokenizer, self.chat_format
        stops = fmt.stop_strings()
        if streamer is not None:
            streamer.put(torch.tensor(ids))

        def should_stop(out: list[int]) -> bool:
            return bool(stops) and any(s in tok.decode(out[-8:], skip_special_tokens=True) for s in stops)

        on_token = (lambda t: streamer.put(torch.tensor([t]))) if streamer is not None else None
        out = self._llama.generate(ids, params, fmt.stop_ids(tok), should_stop, on_token)
        text = tok.decode(out, skip_special_tokens=True)
        for stop in stops:  # never write the other person's lines
            text = text.split(stop)[0]
        return text.strip()

    def _stop_criteria(self) -> Any:
        """Stop strings, built once: the criterion indexes the whole vocabulary (a second per build for Gemma)."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        if self._stops is None:
            strings = self.chat_format.stop_strings()
            self._stops = StoppingCriteriaList(
                [StopStringCriteria(tokenizer=self._tokenizer, stop_strings=strings)] if strings else [])
        return self._stops

    @contextmanager
    def adapter_merged(self) -> Iterator[None]:
        """Fold a switchable adapter into the weights for a while (replies at merged speed), then take it out
        again so that `base=True` works afterwards. A no-op for a clone loaded merged."""
        if not hasattr(self._model, "merge_adapter"):
            yield
            return
        self._model.merge_adapter()
        try:
            yield
        finally:
            self._model.unmerge_adapter()

    def reply_loss(self, context: list[dict[str, Any]], reply: str, base: bool = False) -> tuple[float, int]:
        """Summed cross-entropy of `reply` as the owner's next turn after `context`, and its token count."""
        import contextlib

        from llmclone.evaluation.metrics import reply_loss

        if base and not hasattr(self._model, "disable_adapter"):
            raise UserError("this clone was loaded with its adapter merged; load it with merge=False to compare "
                            "with the base model.")
        context = [{"role": m["role"], "content": m["content"]} for m in context]
        with self._model.disable_adapter() if base else contextlib.nullcontext():
            return reply_loss(self._model, self._tokenizer, self.chat_format, context, reply)

    def sample(self, prompt: str, **sampling: Any) -> str:
        """The original library's call: the clone's answer to one message, as text."""
        return "\n".join(self.reply([{"role": "user", "content": prompt}], **sampling))


class _LineStreamer:
    """Receives generated tokens; hands on each completed line, and nothing from a stop string on."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None], stops: list[str]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.labels = tuple(stop.lstrip("\n") for stop in stops)
        self.ids: list[int] = []
        self.done_lines = 0
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        lines = self.tokenizer.decode(self.ids, skip_special_tokens=True).split("\n")
        self._emit(lines[:-1])

    def end(self) -> None:
        pass

    def flush(self) -> None:
        lines = self.tokenizer.decode(self.ids, skip_special_tokens=True).split("\n")
        self._emit(lines)

    def _emit(self, complete: list[str]) -> None:
        for line in complete[self.done_lines:]:
            self.done_lines += 1
            if self.stopped or (self.labels and line.startswith(self.labels)):
                self.stopped = True
                return
            self.emit(line.strip())


def _base_for(manifest: dict[str, Any]) -> BaseModel:
    recorded = manifest["base_model"]
    try:
        base = resolve(recorded["spec"])
    except UserError as err:
        raise UserError(f"the clone's base model {recorded['spec']!r} is not available here ({err})") from None
    if recorded.get("checksum") and base.checksum and recorded["checksum"] != base.checksum:
        raise UserError(f"the base model found for {recorded['spec']!r} differs from the one the clone was trained on; "
                        "use the same base model files.")
    return base


def train_clone(clone: LLMClone, dataset: Any, out: str | Path | None = None, **kwargs: Any) -> LLMClone:
    """Train `clone` on a dataset (a dataset directory, or what process_tg_data returns); returns it loaded."""
    from llmclone.training.trainer import train

    out = Path(out or clone.config.output_dir or tempfile.mkdtemp(prefix="llmclone-clone-"))
    with tempfile.TemporaryDirectory(prefix="llmclone-data-") as tmp:
        data_dir = Path(dataset) if isinstance(dataset, str | Path) else _write_dataset(dataset, Path(tmp))
        train(data_dir, out, clone.config.train_config(), force=True, **kwargs)
    loaded = LLMClone.load(out, merge=False)  # keeps save() and add_adapters() working on the adapter
    clone.__dict__.update(loaded.__dict__)
    return clone


def _write_dataset(dataset: Any, tmp: Path) -> Path:
    """A Dataset with a `messages` column, or a list of message lists, as a dataset directory."""
    with open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
        for row in dataset:
            messages = row if isinstance(row, list) else row["messages"]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return tmp
