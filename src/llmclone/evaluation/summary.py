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
            + ("" if probe is None else f"; privacy probe: {probe['leaks']} PII-like strings in {probe['prompts']} answers"))
    return lines
