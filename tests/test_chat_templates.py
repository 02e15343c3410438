"""The `template` chat format against templates that behave like those of the instruct families users pick.

Written here after the behaviour of the published templates (not copied): Qwen2.5 inserts a default system
prompt; Mistral v0.1 and Gemma 2 raise on a system role and on roles that do not alternate; Llama 3.1 writes a
date header; Qwen3 writes think blocks and drops them from turns that were answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmclone.errors import UserError
from llmclone.models.chat_format import ChatFormat, _alternating, _render

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
LLAMA31 = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- set ns = namespace(last_query_index=-1) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_query_index = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
# family: (template, special tokens it adds, the end-of-turn token, how the generation prompt ends)
FAMILIES: dict[str, tuple[str, list[str], str, str]] = {
    "qwen2.5": (QWEN25, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|im_start|>assistant\n"),
    "mistral": (MISTRAL, [], "<eos>", " [/INST]"),
    "gemma2": (GEMMA2, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "<start_of_turn>model\n"),
    "llama3.1": (LLAMA31, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>",
                 "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "qwen3": (QWEN3, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>",
              "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
}
CHAT = [{"role": "assistant", "content": "ты тут?"},  # the owner wrote first
        {"role": "user", "content": "да"}, {"role": "user", "content": "что такое"},  # a run of one role
        {"role": "assistant", "content": "пойдём в кино в субботу"},
        {"role": "user", "content": "давай"},
        {"role": "assistant", "content": "ок"}, {"role": "assistant", "content": "в 7 у входа"}]
PERSONA = "You are Owner Person, chatting in a messenger."


def family_tokenizer(tiny_model: Path, family: str) -> Any:
    from transformers import AutoTokenizer

    template, specials, _, _ = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    return tok


def trained_text(tok: Any, ids: list[int], mask: list[int]) -> str:
    return tok.decode([i for i, m in zip(ids, mask, strict=True) if m])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("persona", [None, PERSONA])
def test_family_encodes_masks_and_prompts(tiny_model: Path, family: str, persona: str | None) -> None:
    tok = family_tokenizer(tiny_model, family)
    _, _, end_of_turn, generation = FAMILIES[family]
    fmt = ChatFormat("template", persona=persona)
    conversation = fmt._for_template(tok, CHAT)

    ids, mask = fmt.encode(tok, CHAT)
    # the sample is exactly the template's rendering of the whole conversation
    assert tok.decode(ids) == _render(tok, conversation)
    # the loss is on each owner turn and the token that ends it, on nothing anyone else wrote
    trained = trained_text(tok, ids, mask)
    owner_turns = [m["content"] for m in _alternating(CHAT) if m["role"] == "assistant"]
    rest = trained
    for turn in owner_turns:  # in order, each followed by its end-of-turn token, and nothing else but newlines
        assert rest.lstrip("\n").startswith(turn + end_of_turn), (rest, turn)
        rest = rest.lstrip("\n")[len(turn + end_of_turn):]
    assert not rest.strip()

    # the reply prompt ends where the owner's turn begins, and it is what training put before that turn
    history = CHAT[:5]
    prompt = fmt.prompt(tok, history)
    text = tok.decode(prompt)
    assert text == _render(tok, fmt._for_template(tok, history), generation=True) and text.endswith(generation)
    sample, _ = fmt.encode(tok, [*history, {"role": "assistant", "content": "ок"}])
    assert sample[:len(prompt)] == prompt
    assert tok.convert_tokens_to_ids(end_of_turn) in fmt.stop_ids(tok)

    if persona:
        assert text.count(persona) == 1 and tok.decode(ids).count(persona) == 1
    if family == "qwen2.5":  # a persona replaces the template's own default system prompt
        assert ("You are Qwen" in text) == (persona is None)


def test_templates_that_refuse_a_system_role_get_the_persona_in_the_first_user_turn(tiny_model: Path) -> None:
    from jinja2 import TemplateError

    for family in ("mistral", "gemma2"):
        tok = family_tokenizer(tiny_model, family)
        with pytest.raises(TemplateError):  # the template itself refuses it
            _render(tok, [{"role": "system", "content": PERSONA}, {"role": "user", "content": "hi"}])
        first = ChatFormat("template", persona=PERSONA)._for_template(tok, CHAT)[0]
        assert first == {"role": "user", "content": f"{PERSONA}\n\n…"}


def test_qwen3_thinking_is_off_and_answered_turns_are_masked_without_think_blocks(tiny_model: Path) -> None:
    tok = family_tokenizer(tiny_model, "qwen3")
    fmt = ChatFormat("template")
    ids, mask = fmt.encode(tok, CHAT)
    text = tok.decode(ids)
    # earlier owner turns as the template shows answered turns; the last with its (empty) think block
    assert text.count("<think>") == 1 and text.endswith("<think>\n\n</think>\n\nок\nв 7 у входа<|im_end|>\n")
    assert trained_text(tok, ids, mask) == "ты тут?<|im_end|>пойдём в кино в субботу<|im_end|>ок\nв 7 у входа<|im_end|>"


def test_a_template_that_changes_the_owner_text_is_refused(tiny_model: Path) -> None:
    tok = family_tokenizer(tiny_model, "qwen2.5")
    # earlier owner turns come back upper-cased once answered: neither prefixes nor the owner's text line up
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' and not loop.last %}"
                         "{{ m.content | upper }}{% else %}{{ m.content }}{% endif %}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}]
    with pytest.raises(UserError, match="chat-format transcript"):
        ChatFormat("template").encode(tok, chat)
    ChatFormat("template").encode(tok, chat[:2])  # one owner turn is still fine


def test_persona_auto_names_the_owner_and_languages(tiny_model: Path) -> None:
    from llmclone.training.persona import owner_languages, persona_for

    ru = [[{"role": "user", "content": "как дела"}, {"role": "assistant", "content": "нормально, сижу дома и смотрю кино"}]]
    en = [[{"role": "user", "content": "hey"}, {"role": "assistant", "content": "I am at home watching a movie tonight"}]]
    assert owner_languages(ru * 60 + en * 30) == ["ru", "en"]
    assert owner_languages(ru * 90 + en * 5) == ["ru"]
    template, transcript = ChatFormat("template"), ChatFormat()
    said = persona_for("auto", template, {"name": "Owner Person"}, ru * 60 + en * 30)
    assert said is not None and "Owner Person" in said and "Russian and English" in said
    assert persona_for("auto", transcript, {"name": "Owner Person"}, ru) is None  # base models: no system role
    assert persona_for("none", template, {}, ru) is None
    assert persona_for("Be brief.", template, {}, ru) == "Be brief."
    with pytest.raises(UserError, match="persona"):
        persona_for("Be brief.", transcript, {}, ru)


def test_an_instruct_clone_trains_and_replies_with_its_persona(tiny_model: Path, example_dataset: Path,
                                                               tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from llmclone.clone import LLMClone
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    tok = family_tokenizer(tiny_model, "qwen2.5")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "instruct")
    tok.save_pretrained(tmp_path / "instruct")
    manifest = train(example_dataset, tmp_path / "clone", TrainConfig(model=str(tmp_path / "instruct"), max_steps=2,
                     batch_tokens=512, max_length=256, eval_steps=10**6), quiet=True)
    persona = manifest["chat_format"]["persona"]
    owner = json.loads((example_dataset / "stats.json").read_text())["owner"]["name"]
    assert manifest["chat_format"]["kind"] == "template" and owner in persona and "Russian" in persona
    clone = LLMClone.load(tmp_path / "clone")
    assert clone.chat_format.persona == persona
    prompt = clone.tokenizer.decode(clone.chat_format.prompt(clone.tokenizer, [{"role": "user", "content": "привет"}]))
    assert prompt.startswith(f"<|im_start|>system\n{persona}<|im_end|>") and "You are Qwen" not in prompt
    assert isinstance(clone.reply([{"role": "user", "content": "привет"}], max_new_tokens=5), list)
