"""The evaluation report: plots (PNG files, also embedded) and one self-contained `report.html`."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from llmclone.dataset.io import PRIVATE_FILE, private_umask
from llmclone.evaluation import style

PLOTTED_TRAITS = ("length", "messages_per_turn", "ending", "capitalisation", "emoji", "script", "media")
COLOURS = {"real": "#333333", "base": "#bbbbbb"}
CLONE_COLOURS = ("#d9534f", "#337ab7", "#5cb85c", "#f0ad4e")


def write_report(out: Path, report: dict[str, Any], curves: list[tuple[str, list[dict[str, Any]]]],
                 real: list[list[str]], replies: list[tuple[list[list[str]], list[list[str]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plots = {
        "style.png": _style_plot(real, report, replies),
        "scores.png": _scores_plot(report),
        "loss.png": _loss_plot(curves),
    }
    for name, png in plots.items():
        _write(out / name, png)
    _write(out / "report.html", _html(report, plots).encode("utf-8"))


def _write(path: Path, data: bytes) -> None:
    with private_umask():
        path.write_bytes(data)
    os.chmod(path, PRIVATE_FILE)


def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _style_plot(real: list[list[str]], report: dict[str, Any],
                replies: list[tuple[list[list[str]], list[list[str]]]]) -> bytes:
    """Grouped bars per trait: real vs each clone vs the base model."""
    import matplotlib.pyplot as plt

    series = [("real", real, COLOURS["real"])]
    series += [(_label(report, c), r[0], CLONE_COLOURS[i % 4])
               for i, (c, r) in enumerate(zip(report["clones"], replies, strict=True))]
    series.append(("base model", replies[0][1], COLOURS["base"]))
    fps = [(label, style.distributions(rs), colour) for label, rs, colour in series]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, trait in zip(axes.flat, PLOTTED_TRAITS, strict=False):
        cats = sorted({k for _, fp, _ in fps for k in fp[trait]}, key=_category_order)
        width = 0.8 / len(fps)
        for j, (label, fp, colour) in enumerate(fps):
            ax.bar([x + j * width for x in range(len(cats))], [fp[trait].get(c, 0) for c in cats], width,
                   label=label, color=colour)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cats))], cats, rotation=35, ha="right", fontsize=8)
        ax.set_title(trait.replace("_", " ") + (" (characters)" if trait == "length" else ""))
        ax.set_ylabel("share")
    ax = axes.flat[-1]
    for i, c in enumerate(report["clones"]):
        d = c["style_distance"]
        traits = list(style.TRAITS)
        ax.barh([t + i * 0.4 for t in range(len(traits))], [d["clone"][t] for t in traits], 0.4,
                color=CLONE_COLOURS[i % 4], label=_label(report, c))
        if i == 0:
            ax.barh([t - 0.4 for t in range(len(traits))], [d["base"][t] for t in traits], 0.4, color=COLOURS["base"],
                    label="base model")
        ax.set_yticks(range(len(traits)), traits, fontsize=8)
    ax.set_title("distance to the real style (0 = same)")
    ax.set_xlim(0, 1)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("How the replies look: the owner's real replies, the clone's and the base model's")
    return _png(fig)


def _label(report: dict[str, Any], clone: dict[str, Any]) -> str:
    return f"clone {clone['name']}" if len(report["clones"]) > 1 else "clone"


def _category_order(cat: str) -> tuple[int, str]:
    digits = "".join(ch for ch in cat if ch.isdigit())
    return (int(digits) + (1 if cat.startswith(">") else 0), cat) if digits else (10**6, cat)


def _scores_plot(report: dict[str, Any]) -> bytes:
    """Perplexity, style distance and classifier accuracy: each clone against its base model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [c["name"] for c in report["clones"]]
    panels = [
        ("perplexity of the real replies (lower = less surprised)", lambda c, k: c["perplexity"][k]),
        ("style distance to the real replies (lower = closer; dashed: real vs real)",
         lambda c, k: c["style_distance"][k]["mean"]),
        ("classifier accuracy real vs generated (0.5 = indistinguishable)",
         lambda c, k: c["distinguishability"][k]["accuracy"]),
    ]
    for ax, (title, get) in zip(axes, panels, strict=True):
        labels = ["base model"] + [_label(report, c) for c in report["clones"]]
        values = [get(report["clones"][0], "base")] + [get(c, "clone") for c in report["clones"]]
        colours = [COLOURS["base"]] + [CLONE_COLOURS[i % 4] for i in range(len(names))]
        bars = ax.bar(labels, values, color=colours)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        if "style" in title:
            ax.axhline(report["clones"][0]["style_distance"]["floor"]["mean"], color="k", lw=0.8, ls="--")
        if "accuracy" in title:
            ax.axhline(0.5, color="k", lw=0.8, ls="--")
            ax.set_ylim(0, 1)
            for i, c in enumerate(report["clones"]):
                for x, k in ((0, "base"), (i + 1, "clone")):
                    lo, hi = c["distinguishability"][k]["ci95"]
                    ax.plot([x, x], [lo, hi], color="k", lw=1.2)
    return _png(fig)


def _loss_plot(curves: list[tuple[str, list[dict[str, Any]]]]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (name, rows) in enumerate(curves):
        colour = CLONE_COLOURS[i % 4]
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        final = [(r["step"], r["final_eval_loss"]) for r in rows if "final_eval_loss" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, alpha=0.6, label=f"{name}: train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", color=colour, label=f"{name}: eval (held-out sample)")
        if final:
            ax.plot(*zip(*final, strict=True), "D", color=colour, ms=8, label=f"{name}: final eval (all held-out)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy of the owner's tokens")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    if any(rows for _, rows in curves):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training metrics in the clone directory", ha="center", transform=ax.transAxes)
    return _png(fig)


# -- HTML ----------------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:14px}
th{background:#f4f4f4}img{max-width:100%}.msg{white-space:pre-wrap}.leak{color:#c00;font-weight:bold}
.ok{color:#080}.small{color:#666;font-size:13px}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _lines(messages: list[str]) -> str:
    return "<br>".join(f'<span class="msg">{_e(m)}</span>' for m in messages) or '<span class="small">(nothing)</span>'


def _html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    d = report["dataset"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>LLMClone evaluation</title><style>{CSS}</style>"
             "</head><body>", "<h1>Does the clone sound like its owner?</h1>",
             f"<p>Owner <b>{_e(d['owner'])}</b>; {d['held_out_cases']} held-out replies (the most recent part of the "
             f"history, never trained on); seed {report['options']['seed']}.</p>"]
    parts.append("<h2>Scores</h2><table><tr><th>clone</th><th>perplexity clone / base (ratio)</th>"
                 "<th>style distance clone / base (ratio)</th><th>chrF clone / base</th>"
                 "<th>classifier accuracy real vs clone [95% CI]</th><th>vs base</th><th>privacy probe</th></tr>")
    for c in report["clones"]:
        p, s, dis = c["perplexity"], c["style_distance"], c["distinguishability"]
        probe = c.get("privacy_probe")
        probe_cell = "not run" if probe is None else (
            f'<span class="leak">{probe["leaks"]} PII-like strings</span>' if probe["leaks"] else
            f'<span class="ok">nothing PII-like in {probe["prompts"]} answers</span>')
        parts.append(
            f"<tr><td><b>{_e(c['name'])}</b><br><span class='small'>{_e(c['base_model'])}; "
            f"{_e(_training(c['training']))}</span>"
            + ("" if c.get("trained_on_this_dataset", True) else "<br><span class='leak'>trained on another dataset "
               "(held-out cases may have been seen)</span>") + "</td>"
            f"<td>{p['clone']:.2f} / {p['base']:.2f} ({p['ratio']:.2f})</td>"
            f"<td>{s['clone']['mean']:.3f} / {s['base']['mean']:.3f} ({_e(s['ratio'])})<br><span class='small'>"
            f"real vs real: {s['floor']['mean']:.3f}; gap ratio {_e(s['gap_ratio'])}</span></td>"
            f"<td>{c['chrf']['clone']} / {c['chrf']['base']}</td>"
            f"<td>{dis['clone']['accuracy']:.2f} [{dis['clone']['ci95'][0]:.2f}, {dis['clone']['ci95'][1]:.2f}]</td>"
            f"<td>{dis['base']['accuracy']:.2f}</td><td>{probe_cell}</td></tr>")
    parts.append("</table><p class='small'>Perplexity: how surprised each model is by the owner's real replies (lower is "
                 "better). Style distance: mean Jensen-Shannon distance over message length, messages per turn, emoji, "
                 "endings, capitalisation, alphabet, media and word use (0 = identical, 1 = nothing in common). Two sets of "
                 "your own replies are not at 0 either: 'real vs real' is the distance between these replies and as "
                 "many others of yours (the noise floor at this sample size); the gap ratio is (clone − floor) / "
                 "(base − floor). "
                 "Classifier: cross-validated logistic regression on style features; 0.5 means it cannot tell the "
                 "clone's replies from the real ones.</p>")
    parts.append(_img(plots["scores.png"], "scores"))
    parts.append("<h2>Context and memory</h2><table><tr><th>clone</th><th>context gain clone / base</th>"
                 "<th>memory on / off: perplexity</th><th>chrF</th><th>style distance</th></tr>")
    for c in report["clones"]:
        g, m = c["context_gain"], c.get("memory")
        cells = (f"<td>{m['on']['perplexity']:.2f} / {m['off']['perplexity']:.2f} ({m['perplexity_ratio']:.2f})</td>"
                 f"<td>{m['on']['chrf']} / {m['off']['chrf']}</td>"
                 f"<td>{m['on']['style_distance']:.3f} / {m['off']['style_distance']:.3f}</td>") if m else (
                 "<td colspan=3>no memory</td>")
        parts.append(f"<tr><td><b>{_e(c['name'])}</b></td><td>{g['clone']:.2f} / {g['base']:.2f}</td>{cells}</tr>")
    parts.append("</table><p class='small'>Context gain: perplexity of the real replies after another conversation's "
                 "context divided by after their own (1.0: the context is ignored; higher: it is used). Memory: the "
                 "same clone with and without the past exchanges it recalls into its prompts.</p>")
    contacts = [(c["name"], row) for c in report["clones"] for row in c["per_contact"]]
    if contacts:
        parts.append("<h2>Style per contact</h2><table><tr><th>clone</th><th>chat</th><th>held-out replies</th>"
                     "<th>style distance clone / base</th></tr>")
        parts += [f"<tr><td>{_e(name)}</td><td>{_e(row['chat'])}</td><td>{row['cases']}</td>"
                  f"<td>{row['clone']:.3f} / {row['base']:.3f}</td></tr>" for name, row in contacts]
        parts.append("</table>")
    parts.append("<h2>Style</h2>" + _img(plots["style.png"], "style histograms"))
    parts.append("<h2>Characteristic words</h2><p class='small'>Words and phrases used far more than by the people "
                 "talked to (log-odds z-score).</p><table><tr><th>real</th>")
    parts += [f"<th>clone {_e(c['name'])}</th>" for c in report["clones"]]
    parts.append("<th>base model</th></tr><tr>")
    columns = [report["real"]["characteristic_words"]] + [c["characteristic_words"]["clone"] for c in report["clones"]]
    columns.append(report["clones"][0]["characteristic_words"]["base"])
    parts += ["<td>" + "<br>".join(f"{_e(w)} <span class='small'>{z}</span>" for w, z in col) + "</td>" for col in columns]
    parts.append("</tr></table>")
    parts.append("<h2>Training</h2>" + _img(plots["loss.png"], "loss curves"))
    parts.append("<h2>Example exchanges</h2><table><tr><th>conversation so far</th><th>real reply</th>")
    names = [c["name"] for c in report["clones"]]
    parts += [f"<th>clone {_e(n)}</th>" for n in names]
    parts.append("<th>base model</th></tr>")
    for ex in report["examples"]:
        ctx = "<br>".join(f"<b>{'owner' if m['role'] == 'assistant' else 'them'}:</b> "
                          f"<span class='msg'>{_e(m['content'])}</span>" for m in ex["context"])
        parts.append(f"<tr><td>{ctx or '(conversation starts)'}</td><td>{_lines(ex['real'])}</td>"
                     + "".join(f"<td>{_lines(ex['clones'][n])}</td>" for n in names) + f"<td>{_lines(ex['base'])}</td></tr>")
    parts.append("</table>")
    for c in report["clones"]:
        probe = c.get("privacy_probe")
        if probe is None:
            continue
        parts.append(f"<h2>Privacy probe: clone {_e(c['name'])}</h2><p class='small'>Prompts that try to extract personal "
                     "data; answers checked with the same detectors as ingest.</p><table><tr><th>asks for</th><th>prompt"
                     "</th><th>answer</th><th>PII-like strings</th></tr>")
        for row in probe["answers"]:
            found = ", ".join(f"{f['kind']}: {f['text']}" + {True: " (in your data: a real leak)",
                                                              False: " (made up)"}.get(f.get("in_owner_data"), "")
                              for f in row["found"])
            parts.append(f"<tr><td>{_e(row['topic'])}</td><td>{_e(row['prompt'])}</td><td>{_lines(row['answer'])}</td>"
                         f"<td>{'<span class=leak>' + _e(found) + '</span>' if found else '<span class=ok>none</span>'}"
                         "</td></tr>")
        parts.append("</table>")
        if cross := probe.get("cross_chat"):
            parts.append(f"<p>Cross-chat rule: a line one contact wrote was sent from another chat {cross['asked']} "
                         f"times; another contact's lines reached {cross['foreign_lines_in_prompts']} prompts and "
                         f"{cross['foreign_lines_in_replies']} replies.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _training(t: dict[str, Any]) -> str:
    targets = t.get("target_modules")
    targets = targets if isinstance(targets, str) else "/".join(x.removesuffix("_proj") for x in targets or [])
    return (f"{'QLoRA 4-bit' if t.get('quantize') else 'LoRA'} r{t.get('lora_r')} α{t.get('lora_alpha')} on {targets}, "
            f"lr {t.get('learning_rate')}")
