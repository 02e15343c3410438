"""`llmclone eval`: run one or more clones over the held-out future (`eval.jsonl`) and write the report.

For every held-out case (a conversation up to one of the owner's real replies) each clone and its base
model (the same weights with the adapter switched off, same prompt format) are scored on the real reply
(perplexity) and asked for their own reply (sampled with a per-case seed, so runs repeat exactly).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmclone.config import ReplyConfig
from llmclone.dataset.io import atomic_dir, read_jsonl, write_json
from llmclone.dataset.privacy import REDACTED_VALUES, RedactedValues
from llmclone.errors import UserError
from llmclone.evaluation import metrics, style
from llmclone.evaluation.privacy_probe import cross_chat_probe, run_probe
from llmclone.manifest import read_manifest

EXAMPLES = 12  # exchanges shown side by side in the report


@dataclass
class Case:
    context: list[dict[str, str]]
    real: list[str]  # the owner's real reply, one item per message
    chat: str = ""
    index: int = 0  # position in eval.jsonl
    start: int | None = None  # when its conversation began (left out of what memory recalls, as in training)


@dataclass
class EvalOptions:
    limit: int | None = 200  # held-out cases; None for all
    seed: int = 0
    probe: bool = True
    reply: ReplyConfig = field(default_factory=ReplyConfig)  # device, load and sampling (the torch engine always)
    progress: bool = True
    batch: int | None = None  # cases per forward pass; None: 16 on a GPU, 4 on a CPU


def load_cases(data_dir: str | Path, limit: int | None, seed: int) -> tuple[list[Case], dict[str, Any]]:
    """The held-out cases of a dataset directory (a seeded, order-keeping subset when `limit` is set)."""
    data_dir = Path(data_dir)
    path, stats_path = data_dir / "eval.jsonl", data_dir / "stats.json"
    if not path.is_file() or not stats_path.is_file():
        raise UserError(f"{data_dir} has no eval.jsonl and stats.json; give a dataset directory made by llmclone ingest.")
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    cases = []
    for row in read_jsonl(path):
        messages = row["messages"]
        if messages and messages[-1]["role"] == "assistant":
            real = [m for m in messages[-1]["content"].split("\n") if m.strip()]
            cases.append(Case(messages[:-1], real, row.get("chat", ""), len(cases), row.get("start")))
    if not cases:
        raise UserError(f"{path} holds no held-out replies; ingest with a larger eval fraction (--eval-fraction) "
                        "or more history.")
    if limit is not None and limit < len(cases):
        keep = sorted(random.Random(seed).sample(range(len(cases)), limit))
        cases = [cases[i] for i in keep]
    return cases, stats


def real_reference(data_dir: str | Path, cases: list[Case], seed: int) -> tuple[list[list[str]], bool]:
    """Other real replies of the owner, as many as the cases: the style distance between two sets of the
    same person's replies is what "indistinguishable" measures at this sample size (its noise floor).
    When every held-out reply is in use, the cases' own replies are split in halves (a higher floor)."""
    everything, _ = load_cases(data_dir, None, seed)
    used = {c.index for c in cases}
    rest = [c.real for c in everything if c.index not in used]
    if len(rest) >= max(len(cases) // 2, 10):
        return random.Random(seed + 2).sample(rest, min(len(rest), len(cases))), False
    return [c.real for c in cases[1::2]], True


def check_same_owner(manifest: dict[str, Any], stats: dict[str, Any], clone_dir: Path, data_dir: Path) -> None:
    mine, theirs = manifest.get("owner", {}).get("key"), stats.get("owner", {}).get("key")
    if mine and theirs and mine != theirs:
        raise UserError(f"the clone {clone_dir} was trained on {manifest['owner'].get('name')!r}'s chats but {data_dir} "
                        f"holds {stats['owner'].get('name')!r}'s; evaluate a clone on its own owner's dataset.")


def evaluate(clone_dirs: list[str | Path], data_dir: str | Path, out: str | Path, options: EvalOptions,
             force: bool = False) -> dict[str, Any]:
    """Evaluate each clone on the same held-out cases; write report.json, report.html and the plots."""
    from llmclone.evaluation.report import write_report

    clone_dirs = [Path(d) for d in clone_dirs]
    manifests = [read_manifest(d) for d in clone_dirs]
    cases, stats = load_cases(data_dir, options.limit, options.seed)
    for d, manifest in zip(clone_dirs, manifests, strict=True):
        check_same_owner(manifest, stats, d, Path(data_dir))
    with atomic_dir(out, force=force, what="report") as tmp:  # fails early if the report exists
        real = [c.real for c in cases]
        background = [[m["content"] for m in c.context if m["role"] == "user"] for c in cases]
        reference, split_half = real_reference(data_dir, cases, options.seed)
        floor = style.distance(real if not split_half else real[::2], reference)
        base_cache: dict[str, dict[str, Any]] = {}
        values = RedactedValues.load(Path(data_dir) / REDACTED_VALUES, stats.get("dataset_digest", ""))
        results = [_evaluate_clone(d, m, cases, options, base_cache, values)
                   for d, m in zip(clone_dirs, manifests, strict=True)]
        for r, manifest in zip(results, manifests, strict=True):
            _add_floor(r["summary"]["style_distance"], floor, len(reference), split_half)
            r["summary"]["trained_on_this_dataset"] = manifest.get("dataset", {}).get("digest") == stats.get("dataset_digest")
        report = {
            "dataset": {"dir": str(Path(data_dir).absolute()), "owner": stats.get("owner", {}).get("name"),
                        "digest": stats.get("dataset_digest"), "held_out_cases": len(cases),
                        "eval_from_unixtime": stats.get("split", {}).get("eval_from_unixtime")},
            "options": {"limit": options.limit, "seed": options.seed, "sampling": options.reply.sampling()},
            "real": {"fingerprint": style.distributions(real),
                     "characteristic_words": style.characteristic_words(real, background)},
            "clones": [r["summary"] for r in results],
            "examples": _examples(cases, results, options.seed),
        }
        for r in results:
            r["summary"]["characteristic_words"] = {
                "clone": style.characteristic_words(r["clone_replies"], background),
                "base": style.characteristic_words(r["base_replies"], background)}
        write_json(tmp / "report.json", report)
        write_report(tmp, report, [r["curves"] for r in results], real,
                     [(r["clone_replies"], r["base_replies"]) for r in results])
    return report


def _evaluate_clone(clone_dir: Path, manifest: dict[str, Any], cases: list[Case], options: EvalOptions,
                    base_cache: dict[str, dict[str, Any]], values: RedactedValues | None = None) -> dict[str, Any]:
    from llmclone.clone import LLMClone

    # the torch engine, the adapter kept apart: held-out loss, and the base model's replies beside the clone's
    clone = LLMClone.load(clone_dir, options.reply, merge=False, engine="torch")
    if options.progress:
        print(f"{clone_dir.name}: {clone.runtime.describe() if clone.runtime else ''}", flush=True)
    base_key = json.dumps([manifest["base_model"], manifest["chat_format"]], sort_keys=True)
    # what the clone's memory recalls for each case, as it would replying in that chat
    recalls = [clone.recall(c.context, c.chat or None, c.start) for c in cases] if clone.memory is not None else None
    off: dict[str, Any] | None = None
    with clone.adapter_merged():
        clone_losses, clone_replies = _answer_all(clone, cases, options, f"evaluating {clone_dir.name}", recalls=recalls)
        other_losses = _other_context_losses(clone, cases, options, recalls)
        if recalls is not None:  # the same clone without its memory, beside it
            losses, replies = _answer_all(clone, cases, options, f"{clone_dir.name} without memory",
                                          recalls=[None] * len(cases))
            off = {"losses": losses, "replies": replies}
        probe = run_probe(lambda h: clone.reply(h), values=values) if options.probe else None
        cross_chat = cross_chat_probe(clone, seed=options.seed) if options.probe else None
    runtime = clone.runtime.to_json() if clone.runtime is not None else None
    if base_key not in base_cache:  # clones of one base model share its answers
        losses, replies = _answer_all(clone, cases, options, "evaluating the base model", base=True,
                                      recalls=[None] * len(cases))
        base_cache[base_key] = {"losses": losses, "replies": replies,
                                "other": _other_context_losses(clone, cases, options, None, base=True)}
    base_losses, base_replies = base_cache[base_key]["losses"], base_cache[base_key]["replies"]

    real = [c.real for c in cases]
    ppl_clone, ppl_base = metrics.perplexity(clone_losses), metrics.perplexity(base_losses)
    dist_clone, dist_base = style.distance(real, clone_replies), style.distance(real, base_replies)
    refs = [c.replace("\n", " ") for c in map("\n".join, real)]
    summary: dict[str, Any] = {
        "name": clone_dir.name,
        "dir": str(clone_dir.absolute()),
        "base_model": manifest["base_model"].get("spec"),
        "training": {k: manifest.get("training", {}).get(k) for k in
                     ("lora_r", "lora_alpha", "target_modules", "quantize", "learning_rate", "max_steps", "epochs")},
        "perplexity": {"clone": round(ppl_clone, 3), "base": round(ppl_base, 3), "ratio": round(ppl_clone / ppl_base, 4),
                       "tokens": sum(n for _, n in clone_losses)},
        "chrf": {"clone": metrics.chrf([" ".join(r) for r in clone_replies], refs),
                 "base": metrics.chrf([" ".join(r) for r in base_replies], refs)},
        "style_distance": {"clone": _round(dist_clone), "base": _round(dist_base),
                           "ratio": round(dist_clone["mean"] / dist_base["mean"], 4) if dist_base["mean"] else None},
        "fingerprint": {"clone": style.distributions(clone_replies), "base": style.distributions(base_replies)},
        "distinguishability": {"clone": metrics.distinguishability(real, clone_replies, options.seed),
                               "base": metrics.distinguishability(real, base_replies, options.seed)},
        # perplexity of the real reply under another conversation's context / under its own: 1.0 = context ignored
        "context_gain": {"clone": round(metrics.perplexity(other_losses) / ppl_clone, 4),
                         "base": round(metrics.perplexity(base_cache[base_key]["other"]) / ppl_base, 4)},
        "per_contact": _per_contact(cases, clone_replies, base_replies),
        "runtime": runtime,
        "empty_replies": {"clone": sum(1 for r in clone_replies if not r), "base": sum(1 for r in base_replies if not r)},
    }
    if off is not None:
        off_ppl = metrics.perplexity(off["losses"])
        summary["memory"] = {
            "exchanges": (manifest.get("memory") or {}).get("exchanges"),
            "recalled_cases": sum(r is not None for r in recalls or []),
            "on": {"perplexity": round(ppl_clone, 3), "chrf": summary["chrf"]["clone"],
                   "style_distance": round(dist_clone["mean"], 4)},
            "off": {"perplexity": round(off_ppl, 3),
                    "chrf": metrics.chrf([" ".join(r) for r in off["replies"]], refs),
                    "style_distance": round(style.distance(real, off["replies"])["mean"], 4)},
            "perplexity_ratio": round(ppl_clone / off_ppl, 4)}
    if probe is not None:
        summary["privacy_probe"] = probe | ({"cross_chat": cross_chat} if cross_chat is not None else {})
    curves = [json.loads(line) for line in (clone_dir / "metrics.jsonl").read_text().splitlines()
              if line.strip()] if (clone_dir / "metrics.jsonl").is_file() else []
    return {"summary": summary, "clone_replies": clone_replies, "base_replies": base_replies,
            "curves": (clone_dir.name, curves)}


def _batch(clone: Any, options: EvalOptions) -> int:
    return options.batch or (16 if clone.runtime is not None and clone.runtime.cuda else 4)


def _other_context_losses(clone: Any, cases: list[Case], options: EvalOptions, recalls: list[Any] | None,
                          base: bool = False) -> list[tuple[float, int]]:
    """Loss of each real reply after the context (and recalled memory) of another held-out conversation: the
    next case from another chat, or the next case when all are from one."""
    n = len(cases)
    other = [next((j % n for j in range(i + 1, i + n) if cases[j % n].chat != cases[i].chat), (i + 1) % n)
             for i in range(n)]
    batch = _batch(clone, options)
    pairs = [(cases[j].context, "\n".join(cases[i].real)) for i, j in enumerate(other)]
    return clone.reply_losses(pairs, base=base, batch=batch, recalls=[recalls[j] for j in other] if recalls else None)


def _per_contact(cases: list[Case], clone_replies: list[list[str]], base_replies: list[list[str]], top: int = 5,
                 least: int = 8) -> list[dict[str, Any]]:
    """Style distance to the owner's real replies, chat by chat, for the chats with the most held-out cases
    (owner -> contact against clone -> contact)."""
    by_chat: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        by_chat.setdefault(c.chat, []).append(i)
    rows = []
    for chat, picks in sorted(by_chat.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]:
        if len(picks) < least:
            break
        real = [cases[i].real for i in picks]
        rows.append({"chat": chat, "cases": len(picks),
                     "clone": round(style.distance(real, [clone_replies[i] for i in picks])["mean"], 4),
                     "base": round(style.distance(real, [base_replies[i] for i in picks])["mean"], 4)})
    return rows


def _answer_all(clone: Any, cases: list[Case], options: EvalOptions, desc: str, base: bool = False,
                recalls: list[Any] | None = None) -> tuple[list[tuple[float, int]], list[list[str]]]:
    """Loss of each real reply and a sampled reply of one's own, seeded per case (same seeds for every model),
    in batches: the same numbers as one case at a time (tests/test_eval.py), several cases per forward pass."""
    from tqdm import tqdm

    batch = _batch(clone, options)
    losses: list[tuple[float, int]] = []
    replies: list[list[str]] = []
    with tqdm(total=len(cases), desc=desc, unit="case", disable=not options.progress) as bar:
        for start in range(0, len(cases), batch):
            chunk = cases[start:start + batch]
            recalled = recalls[start:start + batch] if recalls is not None else None
            losses += clone.reply_losses([(c.context, "\n".join(c.real)) for c in chunk], base=base, batch=batch,
                                         recalls=recalled)
            seeds = [{"seed": options.seed * 1_000_003 + start + i} for i in range(len(chunk))]
            replies += clone.reply_batch([c.context for c in chunk], keep_media_tags=True, base=base, samplings=seeds,
                                         recalls=recalled or [None] * len(chunk))
            bar.update(len(chunk))
    return losses, replies


def _add_floor(distance: dict[str, Any], floor: dict[str, float], n: int, split_half: bool) -> None:
    """The noise floor and the gap above it: (clone - floor) / (base - floor), the share of the base model's
    excess distance that is left; sampling noise alone keeps the raw ratio near 1 on small sets."""
    distance["floor"] = {**_round(floor), "n": n, "split_half": split_half}
    gap_clone = max(distance["clone"]["mean"] - floor["mean"], 0.0)
    gap_base = distance["base"]["mean"] - floor["mean"]
    distance["gap_ratio"] = round(gap_clone / gap_base, 4) if gap_base > 0 else None


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def _examples(cases: list[Case], results: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A seeded sample of exchanges: the context's last lines, the real reply, each clone's, the base's."""
    picks = sorted(random.Random(seed + 1).sample(range(len(cases)), min(EXAMPLES, len(cases))))
    rows = []
    for i in picks:
        row: dict[str, Any] = {"context": cases[i].context[-4:], "real": cases[i].real,
                               "base": results[0]["base_replies"][i]}
        row["clones"] = {r["summary"]["name"]: r["clone_replies"][i] for r in results}
        rows.append(row)
    return rows
