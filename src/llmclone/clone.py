"""LLMClone: a trained clone, loaded from its directory, answering as its owner.

Also the original library's methods on it: `LLMClone(CloneConfig(...))`, `clone.sample(prompt)`,
`clone.save(path)`, `clone.add_adapters(path)`; its functions are in compat.py.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmclone import placeholders
from llmclone.config import ReplyConfig, TrainConfig, load_table
from llmclone.dataset.io import private_umask, write_json
from llmclone.errors import UserError
from llmclone.manifest import read_manifest
from llmclone.memory.recall import Memory, RecallSettings
from llmclone.models import runtime
from llmclone.models.base_models import BaseModel, base_of_clone, resolve
from llmclone.models.chat_format import ChatFormat, Recall
from llmclone.models.engine import Engine, Request, Sampling
from llmclone.models.runtime import Runtime

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
    """A clone ready to answer: `model` and `tokenizer` (transformers objects; the model is None under the
    llama.cpp engine), `engine` (models/engine.py), `runtime` (where and how it runs), `chat_format`."""

    def __init__(self, config: CloneConfig | None = None) -> None:
        self.config = config or CloneConfig()
        self.clone_dir: Path | None = None
        self.manifest: dict[str, Any] | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.engine: Engine | None = None
        self.runtime: Runtime | None = None
        self.chat_format = ChatFormat()
        self.sampling: dict[str, Any] = {}  # what every reply starts from (ReplyConfig.sampling)
        self.memory: Memory | None = None  # past exchanges recalled into each prompt (memory/recall.py)
        self.recall_settings = RecallSettings()

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, clone_dir: str | Path, settings: ReplyConfig | None = None, merge: bool = True,
             **overrides: Any) -> LLMClone:
        """Load a clone directory: its base model (resolved again on this machine) plus its adapter.

        How it replies is `settings` (config.py's ReplyConfig, a clone TOML's [reply] table), with any of its
        fields given as keywords on top: the sampling defaults every reply starts from, and the following.
        `device` (auto|cpu|cuda|cuda:N) and `load` (auto|4bit|bf16) are decided by models/runtime.py: a GPU
        when there is one, its native 16-bit precision, the base in 4-bit NF4 for a QLoRA clone or when 16-bit
        weights would not fit; memory is checked before anything is loaded. `merge=True` folds the adapter
        into full weights (an unmerged LoRA costs a third or more per token); `merge=False` keeps it apart, so
        `reply(base=True)` can switch it off. `engine="llama.cpp"` replies with llama.cpp on the clone exported
        to a `quant` GGUF (built once and cached; needs llama-cpp-python), faster on a CPU, at slightly lower
        precision; its output layer scores only the tokens the clone uses (`vocabulary="shortlist"`, see
        models/shortlist.py) unless `vocabulary="full"`.
        """
        settings = load_table(None, "reply", ReplyConfig, (settings.model_dump() if settings else {}) | overrides)
        engine, device, load = settings.engine, settings.device, settings.load
        manifest = read_manifest(clone_dir)
        clone = cls(CloneConfig(model_name=manifest["base_model"]["spec"]))
        clone.clone_dir, clone.manifest = Path(clone_dir), manifest
        clone.sampling = settings.sampling()
        clone.chat_format = ChatFormat.from_json(manifest["chat_format"])
        clone._load_memory(settings.memory)
        base = base_of_clone(manifest)
        if engine == "llama.cpp":
            from transformers import AutoTokenizer

            from llmclone.models.llamacpp import LlamaCppEngine, clone_gguf, require

            if device not in ("auto", "cpu"):
                raise UserError("the llama.cpp engine runs on the CPU; use --engine torch to reply on a GPU.")
            require()  # before any export work: say what to install
            clone.tokenizer = AutoTokenizer.from_pretrained(base.path)
            shortlist = settings.vocabulary == "shortlist"
            gguf = clone_gguf(clone_dir, settings.quant, clone.tokenizer if shortlist else None)
            clone.engine = LlamaCppEngine(gguf, n_ctx=CONTEXT_TOKENS + 256, tokenizer=clone.tokenizer)
        else:
            clone._load(base, Path(clone_dir) / "adapter", merge, device, load)
        return clone

    def _load_memory(self, wanted: str) -> None:
        """The memory, recalled as in training: "auto" when the clone was trained with one, "on" always."""
        assert self.clone_dir is not None and self.manifest is not None
        trained = self.manifest.get("memory")
        if wanted == "off" or (wanted == "auto" and not (trained and trained.get("trained", True))):
            return
        self.memory = Memory.load(self.clone_dir)  # "on" without one: says how to build it
        if trained:
            self.recall_settings = RecallSettings(**{k: trained[k] for k in ("k", "recent", "tokens")})

    def recall(self, history: list[dict[str, Any]], chat: str | None, session: int | None = None) -> Recall | None:
        """What the memory brings into the prompt of `history` in `chat` (None without memory); `session`: the
        start of the conversation `history` is from, left out as in training (memory/recall.py)."""
        if self.memory is None:
            return None
        return self.memory.recall(history, chat, self.recall_settings, session) or None

    def _load(self, base: BaseModel, adapter: Path | None, merge: bool = False, device: str = "auto",
              load: str = "auto") -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmclone.models.torch_engine import TorchEngine

        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        qlora = ((self.manifest or {}).get("training") or {}).get("quantize") == "4bit"
        size = runtime.model_size(base.path) if any(Path(base.path).glob("*.safetensors")) else None
        chosen = runtime.plan(runtime.machine(), size, device, load, qlora_clone=qlora,
                              kernels=os.environ.get("LLMCLONE_KERNELS", "auto"))
        if not merge:
            chosen = replace(chosen, merge=False)
        self.tokenizer = AutoTokenizer.from_pretrained(base.path)
        kwargs: dict[str, Any] = {"dtype": chosen.torch_dtype()}
        if chosen.cuda:  # split across the GPUs by accelerate when it fits none alone
            kwargs["device_map"] = "auto" if chosen.gpus > 1 else {"": chosen.device}
        if chosen.four_bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=chosen.torch_dtype())
        model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter))
            if chosen.merge:
                model = model.merge_and_unload()
        if chosen.kernels == "liger":
            from llmclone.models import fused_kernels

            fused_kernels.apply(model)
        self.model, self.runtime = model.eval(), chosen
        # CUDA graphs capture one device's kernels: a model split across GPUs decodes without them
        self.engine = TorchEngine(self.model, self.tokenizer, chosen.device, context_tokens=CONTEXT_TOKENS,
                                  graphs=False if chosen.gpus > 1 else None)

    def add_adapters(self, path: str | Path) -> None:
        """Put a trained LoRA adapter (a directory with adapter_config.json) on the base model."""
        from peft import PeftModel

        from llmclone.models.torch_engine import TorchEngine

        path = Path(path)
        if (path / "adapter").is_dir():
            path = path / "adapter"
        if not (path / "adapter_config.json").is_file():
            raise UserError(f"{path} holds no LoRA adapter (adapter_config.json); give a clone or adapter directory.")
        if self.model is None or (self.clone_dir is not None and not hasattr(self.model, "peft_config")):
            self._load(resolve(self.config.model_name), None)  # a merged clone's weights are not the base
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.model = PeftModel.from_pretrained(base, str(path)).eval()
        assert self.runtime is not None
        self.engine = TorchEngine(self.model, self.tokenizer, self.runtime.device, context_tokens=CONTEXT_TOKENS)

    def save(self, path: str | Path) -> None:
        """Save the adapter (and, for a loaded clone, its manifest) to a directory."""
        if self.model is None or not hasattr(self.model, "peft_config"):
            raise UserError("nothing to save: train the clone, or load one with merge=False.")
        path = Path(path)
        with private_umask():
            self.model.save_pretrained(str(path / "adapter"))
        if self.manifest is not None:
            write_json(path / "clone.json", self.manifest)

    # -- replying --------------------------------------------------------------------------------------
    def reply(self, history: list[dict[str, Any]], keep_media_tags: bool = False, base: bool = False,
              on_message: Callable[[str], None] | None = None, chat: str | None = None, **sampling: Any) -> list[str]:
        """The owner's next messages after `history` ([{"role": "user"|"assistant", "content": ...}, ...]).

        The merged turn is split back into messages, one per line. `on_message` receives each message as
        soon as it is complete, while the rest is still being generated. `base=True` answers with the base
        model (the adapter switched off), for comparison. `chat`: the chat's key (memory/exchanges.py), so
        that memory brings this contact's own past and relation; without it only the owner's words are
        recalled. Sampling settings: models/engine.py's `Sampling`.
        """
        return self.reply_batch([history], keep_media_tags, base, [on_message], [sampling], chats=[chat])[0]

    def reply_batch(self, histories: list[list[dict[str, Any]]], keep_media_tags: bool = False, base: bool = False,
                    on_messages: list[Callable[[str], None] | None] | None = None,
                    samplings: list[dict[str, Any]] | None = None,
                    cancelled: list[Callable[[], bool] | None] | None = None,
                    chats: list[str | None] | None = None, recalls: list[Recall | None] | None = None
                    ) -> list[list[str]]:
        """`reply` for several conversations at once (decoded together by the torch engine), each with its own
        sampling settings and streaming callback; `recalls`: each one's memory block, instead of recalling it."""
        replies = self.replies(histories, base, on_messages, samplings, cancelled, keep_media_tags, chats, recalls)
        return [r.messages for r in replies]

    def replies(self, histories: list[list[dict[str, Any]]], base: bool = False,
                on_messages: list[Callable[[str], None] | None] | None = None,
                samplings: list[dict[str, Any]] | None = None, cancelled: list[Callable[[], bool] | None] | None = None,
                keep_media_tags: bool = False, chats: list[str | None] | None = None,
                recalls: list[Recall | None] | None = None) -> list[Reply]:
        """Replies with their token counts and why each ended (for the API's usage and finish_reason)."""
        if self.engine is None or self.tokenizer is None:
            raise UserError("the clone has no model yet: train it or load a clone directory.")
        n = len(histories)
        on_messages = on_messages or [None] * n
        samplings = samplings or [{}] * n
        cancelled = cancelled or [None] * n
        chats = chats or [None] * n
        recalled = recalls or [self.recall(h, chat) for h, chat in zip(histories, chats, strict=True)]
        requests, streamers = [], []
        for history, on_message, settings, gone, recall in zip(histories, on_messages, samplings, cancelled, recalled,
                                                               strict=True):
            chosen = self.sampling | {k: v for k, v in settings.items() if v is not None}
            request, streamer = self._request(history, Sampling.of(chosen), on_message, keep_media_tags, recall)
            request.cancelled = gone
            requests.append(request)
            streamers.append(streamer)
        outs = self.engine.generate(requests, base=base)
        replies = []
        for request, out, streamer in zip(requests, outs, streamers, strict=True):
            if streamer is not None:
                streamer.flush()
            text = self._cut(self.tokenizer.decode(out, skip_special_tokens=True))
            messages = [m for m in (placeholders.render_outgoing(line, keep_media_tags) for line in text.split("\n")) if m]
            replies.append(Reply(messages, len(request.ids), len(out), request.finish_reason))
        return replies

    def _request(self, history: list[dict[str, Any]], sampling: Sampling, on_message: Callable[[str], None] | None,
                 keep_media_tags: bool, recall: Recall | None = None) -> tuple[Request, _LineStreamer | None]:
        assert self.engine is not None
        tok, fmt = self.tokenizer, self.chat_format
        history = [{"role": m["role"], "content": m["content"]} for m in history]
        ids = fmt.prompt_within(tok, history, self.engine.context_tokens, recall)
        stops = fmt.stop_strings()

        def should_stop(out: list[int]) -> bool:  # never write the other person's lines
            return any(s in tok.decode(out[-16:], skip_special_tokens=True) for s in stops)

        streamer = None
        if on_message is not None:
            def emit(line: str) -> None:
                rendered = placeholders.render_outgoing(line, keep_media_tags)
                if rendered:
                    on_message(rendered)

            streamer = _LineStreamer(tok, emit, stops)
        return Request(ids, sampling, fmt.stop_ids(tok), should_stop if stops else None,
                       streamer.add if streamer is not None else None), streamer

    def _cut(self, text: str) -> str:
        for stop in self.chat_format.stop_strings():  # never write the other person's lines
            text = text.split(stop)[0]
        return text.strip()

    @contextmanager
    def adapter_merged(self) -> Iterator[None]:
        """Fold a switchable adapter into the weights for a while (replies at merged speed), then take it out
        again so that `base=True` works afterwards. A no-op for a clone loaded merged, and for a 4-bit base
        (merging into NF4 weights would round the adapter: it stays apart, exact)."""
        if not hasattr(self.model, "merge_adapter") or (self.runtime is not None and self.runtime.four_bit):
            yield
            return
        self.model.merge_adapter()
        try:
            yield
        finally:
            self.model.unmerge_adapter()

    def reply_loss(self, context: list[dict[str, Any]], reply: str, base: bool = False) -> tuple[float, int]:
        """Summed cross-entropy of `reply` as the owner's next turn after `context`, and its token count."""
        return self.reply_losses([(context, reply)], base=base)[0]

    def reply_losses(self, cases: list[tuple[list[dict[str, Any]], str]], base: bool = False, batch: int = 8,
                     recalls: list[Recall | None] | None = None) -> list[tuple[float, int]]:
        """`reply_loss` for many (context, reply) pairs, scored in padded batches; `recalls`: each case's
        memory block (default none)."""
        from llmclone.models.scoring import reply_tokens

        if not hasattr(self.engine, "score"):
            raise UserError("scoring replies needs the torch engine; load the clone with engine='torch'.")
        recalls = recalls or [None] * len(cases)
        items = [reply_tokens(self.tokenizer, self.chat_format,
                              [{"role": m["role"], "content": m["content"]} for m in context], reply, recall=recall)
                 for (context, reply), recall in zip(cases, recalls, strict=True)]
        return self.engine.score(items, base=base, batch=batch)  # type: ignore[union-attr]

    def sample(self, prompt: str, **sampling: Any) -> str:
        """The original library's call: the clone's answer to one message, as text."""
        return "\n".join(self.reply([{"role": "user", "content": prompt}], **sampling))


@dataclass
class Reply:
    messages: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class _LineStreamer:
    """Receives generated tokens; hands on each completed line, and nothing from a stop string on."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None], stops: list[str]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.labels = tuple(stop.lstrip("\n") for stop in stops)
        self.ids: list[int] = []
        self.done_lines = 0
        self.stopped = False

    def add(self, token: int) -> None:
        self.ids.append(token)
        if "\n" in self.tokenizer.decode([token], skip_special_tokens=True):
            lines = self.tokenizer.decode(self.ids, skip_special_tokens=True).split("\n")
            self._emit(lines[:-1])

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
