"""How a conversation becomes tokens: one definition for training samples and for reply prompts.

- `transcript` (base models, the original article's format):
      <bos>User: how are you?\\nClone: fine))<eos>\\nUser: ...\\nClone:
  The clone's turn is its text plus the end-of-sequence token; everything else is context.
- `template` (instruct models): the tokenizer's own chat template, the owner as `assistant`, with an optional
  persona as the system prompt (folded into the first user turn where the template refuses a system role,
  as Mistral's and Gemma's do). Templates with thinking blocks (Qwen3) are rendered with thinking off.

A conversation may come with a `Recall` (what the clone's memory brings: whom it talks to and past exchanges,
memory/recall.py). It is rendered as a block of context before the conversation, the same in training and
replying: in the transcript after <bos>, in a template inside the system prompt. It is never trained on.

`encode` returns the token ids and a mask of the tokens the loss is taken on: the owner's words and the
token that ends the owner's turn, never anyone else's lines. Templates that rewrite earlier turns once a
later one follows (Qwen3 drops the think block of answered turns) are masked on the whole conversation's
rendering, each owner turn found in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmclone.errors import UserError

TRANSCRIPT, TEMPLATE = "transcript", "template"
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>")


@dataclass(frozen=True)
class Recall:
    relation: str | None = None  # who the other side is to the owner ("mom"), from the contacts file
    exchanges: tuple[tuple[str, str], ...] = ()  # (what the other side said, or "" if not shown; the owner's turn)

    def __bool__(self) -> bool:
        return bool(self.relation or self.exchanges)


@dataclass(frozen=True)
class ChatFormat:
    kind: str = TRANSCRIPT
    user_label: str = "User"
    clone_label: str = "Clone"
    persona: str | None = None  # the system prompt of a template format (training/persona.py writes it)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, requested: str | None = None) -> ChatFormat:
        kind = requested or (TEMPLATE if getattr(tokenizer, "chat_template", None) else TRANSCRIPT)
        if kind == TEMPLATE and not getattr(tokenizer, "chat_template", None):
            raise UserError("this model's tokenizer has no chat template; use the transcript chat format.")
        if kind not in (TRANSCRIPT, TEMPLATE):
            raise UserError(f"unknown chat format {kind!r}; use 'transcript' or 'template'.")
        return cls(kind)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatFormat:
        return cls(data["kind"], data.get("user_label", "User"), data.get("clone_label", "Clone"), data.get("persona"))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "user_label": self.user_label, "clone_label": self.clone_label,
                "persona": self.persona}

    # -- training --------------------------------------------------------------------------------------
    def encode(self, tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int | None = None,
               recall: Recall | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a whole sample and its loss mask (1 = an owner token). Long samples keep their end
        (and, in the transcript, their <bos> and recalled memory)."""
        if self.kind == TEMPLATE:
            ids, mask = _tokenize_pieces(tokenizer, self._pieces(tokenizer, messages, recall))
            if max_length is not None and len(ids) > max_length:
                ids, mask = ids[-max_length:], mask[-max_length:]
            return ids, mask
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        head = bos
        while recall:  # memory takes at most half of a sample: the oldest exchanges go first
            head = bos + tokenizer(self.recall_text(recall), add_special_tokens=False)["input_ids"]
            if max_length is None or len(head) <= max_length // 2:
                break
            head = bos
            recall = Recall(recall.relation, recall.exchanges[1:]) if recall.exchanges else None
        ids, mask = _tokenize_pieces(tokenizer, self._pieces(tokenizer, messages))
        if max_length is not None and len(head) + len(ids) > max_length:
            keep = max(0, max_length - len(head))
            ids, mask = (ids[-keep:], mask[-keep:]) if keep else ([], [])
        return [*head, *ids], [0] * len(head) + mask

    def recall_text(self, recall: Recall) -> str:
        """The memory block: past exchanges, then whom the clone is talking to, then a rule before the chat."""
        lines = []
        for said, owner in recall.exchanges:
            if said:
                lines.append(f"{self.user_label}: {said}")
            lines.append(f"{self.clone_label}: {owner}")
        parts = (["Memory:", *lines] if lines else []) + ([f"Talking to: {recall.relation}"] if recall.relation else [])
        return "\n".join([*parts, "---"]) + "\n"

    # -- replying --------------------------------------------------------------------------------------
    def prompt(self, tokenizer: Any, history: Sequence[dict[str, str]], recall: Recall | None = None) -> list[int]:
        """Token ids of the conversation so far, ending where the clone's turn begins."""
        if self.kind == TRANSCRIPT:
            pieces = [(self.recall_text(recall), 0)] if recall else []
            ids, _ = _tokenize_pieces(tokenizer, [*pieces, *self._pieces(tokenizer, history),
                                                  (self.clone_label + ": ", 0)])
            return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
        text = _render(tokenizer, self._for_template(tokenizer, history, recall), generation=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_within(self, tokenizer: Any, history: Sequence[dict[str, str]], budget: int,
                      recall: Recall | None = None) -> list[int]:
        """`prompt` of the most recent history that fits `budget` tokens, in time linear in the history: each
        message is tokenized once and the oldest are dropped by running totals. The frame (<bos>, the format's
        markers, the clone's label) is always kept; a last message longer than the budget keeps its end. A
        memory block stays unless not even the last message fits beside it."""
        if recall:
            ids = self._prompt_within(tokenizer, history, budget, recall)
            if len(ids) <= budget and (not history or len(self.prompt(tokenizer, history[-1:], recall)) <= budget):
                return ids
        return self._prompt_within(tokenizer, history, budget, None)

    def _prompt_within(self, tokenizer: Any, history: Sequence[dict[str, str]], budget: int,
                       recall: Recall | None) -> list[int]:
        history = list(history)
        if not history:
            return self.prompt(tokenizer, history, recall)
        lengths = [len(x) for x in tokenizer([m["content"] for m in history], add_special_tokens=False)["input_ids"]]
        overhead = 8  # labels and newlines per message, an estimate refined by the real prompt below
        total = sum(lengths) + overhead * len(history) + 4
        if recall:
            total += len(tokenizer(self.recall_text(recall), add_special_tokens=False)["input_ids"])
        start = 0
        while start < len(history) - 1 and total > budget:
            total -= lengths[start] + overhead
            start += 1
        while True:
            ids = self.prompt(tokenizer, history[start:], recall)
            if len(ids) <= budget or start == len(history) - 1:
                break
            excess, average = len(ids) - budget, max(1, sum(lengths[start:]) // (len(history) - start))
            start = min(len(history) - 1, start + max(1, excess // (average + overhead)))
        if len(ids) <= budget:
            return ids
        last = dict(history[-1])  # one message longer than the whole budget: keep its end
        content = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
        frame = len(ids) - len(content)
        last["content"] = tokenizer.decode(content[-max(1, budget - frame - 2):], skip_special_tokens=True)
        ids = self.prompt(tokenizer, [last])
        return ids if len(ids) <= budget else ids[:1] + ids[len(ids) - budget + 1:]

    def stop_ids(self, tokenizer: Any) -> list[int]:
        """Tokens that end the clone's turn."""
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        if self.kind == TEMPLATE:
            vocab = tokenizer.get_vocab()
            ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
        return sorted(ids)

    def stop_strings(self) -> list[str]:
        """Text that means the model started writing someone else's line (a safety net for base models)."""
        return [f"\n{self.user_label}:", f"\n{self.clone_label}:"] if self.kind == TRANSCRIPT else []

    # -- internals -------------------------------------------------------------------------------------
    def _pieces(self, tokenizer: Any, messages: Sequence[dict[str, str]], recall: Recall | None = None
                ) -> list[tuple[str, int]]:
        if self.kind == TEMPLATE:
            return _template_pieces(tokenizer, self._for_template(tokenizer, messages, recall))
        eos = tokenizer.eos_token or ""
        pieces: list[tuple[str, int]] = []
        for m in messages:
            if m["role"] == "assistant":
                pieces += [(self.clone_label + ": ", 0), (m["content"] + eos, 1), ("\n", 0)]
            else:
                pieces.append((f"{self.user_label}: {m['content']}\n", 0))
        return pieces

    def _for_template(self, tokenizer: Any, messages: Sequence[dict[str, str]], recall: Recall | None = None
                      ) -> list[dict[str, str]]:
        out = _alternating(messages)
        system = "\n\n".join(x for x in (self.persona, self.recall_text(recall).rstrip("\n") if recall else None) if x)
        if not system:
            return out
        if _takes_system(tokenizer):
            return [{"role": "system", "content": system}, *out]
        if not out or out[0]["role"] != "user":
            out.insert(0, {"role": "user", "content": "…"})
        out[0] = {"role": "user", "content": f"{system}\n\n{out[0]['content']}"}
        return out


def _tokenize_pieces(tokenizer: Any, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"] if pieces else []
    ids: list[int] = []
    mask: list[int] = []
    for (_, trained), piece_ids in zip(pieces, encoded, strict=True):
        ids += piece_ids
        mask += [trained] * len(piece_ids)
    return ids, mask


def _alternating(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Chat templates want alternating roles starting with the user: join runs, open with a user line."""
    out: list[dict[str, str]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n" + m["content"]}
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": "…"})
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool = False) -> str:
    # enable_thinking: Qwen3's switch (a clone answers a chat, it does not reason aloud); other templates ignore it
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                         enable_thinking=False)


_SYSTEM_ROLE: dict[str, bool] = {}


def _takes_system(tokenizer: Any) -> bool:
    """Whether the template renders a system message (Mistral's and Gemma 2's raise on one)."""
    template = str(tokenizer.chat_template)
    if template not in _SYSTEM_ROLE:
        probe = "persona-probe-7f3a"
        try:
            text = _render(tokenizer, [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}])
            _SYSTEM_ROLE[template] = probe in text
        except Exception:  # jinja's TemplateError from raise_exception, or whatever a template throws
            _SYSTEM_ROLE[template] = False
    return _SYSTEM_ROLE[template]


def _template_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, int]]:
    """Render prefix by prefix; the text each assistant message adds is what the loss is taken on."""
    pieces: list[tuple[str, int]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = _render(tokenizer, messages[:i], generation=True)
            if not before.startswith(done):
                return _located_pieces(tokenizer, messages)
            pieces.append((before[len(done):], 0))
            done = before
        after = _render(tokenizer, messages[: i + 1])
        if not after.startswith(done):
            return _located_pieces(tokenizer, messages)
        pieces.append((after[len(done):], 1 if m["role"] == "assistant" else 0))
        done = after
    return [(text, trained) for text, trained in pieces if text]


def _located_pieces(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, int]]:
    """For templates that rewrite earlier turns: the whole conversation rendered once, each message found in
    order; an owner turn is its text with an end-of-turn marker right after it, and both are trained."""
    full = _render(tokenizer, messages)
    closers = [t for t in (*END_OF_TURN_TOKENS, tokenizer.eos_token) if t]
    pieces: list[tuple[str, int]] = []
    emitted = search = 0
    for m in messages:
        if m["role"] != "assistant":  # passed over, so that an owner turn is not found inside it
            at = full.find(m["content"], search)
            search = at + len(m["content"]) if at >= 0 else search
            continue
        found = [(at, text, closer) for text in dict.fromkeys((m["content"], m["content"].strip())) for closer in closers
                 if (at := full.find(text + closer, search)) >= 0]
        if not found:
            raise UserError("this model's chat template changes the owner's turns, so the owner's tokens cannot "
                            "be found; train with --chat-format transcript.")
        at, text, closer = min(found)
        end = at + len(text) + len(closer)
        pieces += [(full[emitted:at], 0), (full[at:end], 1)]
        emitted = search = end
    pieces.append((full[emitted:], 0))
    return [(text, trained) for text, trained in pieces if text]
