"""The few lines `llmclone eval` prints: each clone's headline numbers against its base model."""

from __future__ import annotations

from typing import Any


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['dataset']['held_out_cases']} held-out replies of {report['dataset']['owner']}"]
    for c in report["clones"]:
        p, s, d = c["perplexity"], c["style_distance"], c["distinguishability"]["clone"]
        probe = c.get("privacy_probe")
        lines.append(
            f"{c['name']}: perplexity {p['clone']:.1f} vs base {p['base']:.1f} ({p['ratio']:.2f}x); "
            f"style distance {s['clone']['mean']:.3f} vs base {s['base']['mean']:.3f}"
            + (f" ({s['ratio']:.2f}x)" if s["ratio"] is not None else "")
            + (f", real-vs-real floor {s['floor']['mean']:.3f}" if "floor" in s else "")
            + (f" (gap ratio {s['gap_ratio']:.2f}x)" if s.get("gap_ratio") is not None else "")
            + f"; chrF {c['chrf']['clone']} vs {c['chrf']['base']}; "
            f"real-vs-clone classifier {d['accuracy']:.0%} [{d['ci95'][0]:.0%}-{d['ci95'][1]:.0%}]"
            + f"; context gain {c['context_gain']['clone']:.2f}x vs base {c['context_gain']['base']:.2f}x"
            + ("" if probe is None else f"; privacy probe: {probe['leaks']} PII-like strings in {probe['prompts']} answers"
               + ("" if probe.get("real_leaks") is None else f", {probe['real_leaks']} of them from your own data")
               + ("" if "cross_chat" not in probe else
                  f"; another contact's lines in {probe['cross_chat']['foreign_lines_in_prompts']} prompts and "
                  f"{probe['cross_chat']['foreign_lines_in_replies']} replies of {probe['cross_chat']['asked']} asked")))
        if m := c.get("memory"):
            lines.append(f"  memory on vs off: perplexity {m['on']['perplexity']:.1f} vs {m['off']['perplexity']:.1f} "
                         f"({m['perplexity_ratio']:.2f}x), chrF {m['on']['chrf']} vs {m['off']['chrf']}, style distance "
                         f"{m['on']['style_distance']:.3f} vs {m['off']['style_distance']:.3f}")
    return lines
