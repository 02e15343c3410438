"""Ingest speed and memory: `llmclone ingest` against the original article's pandas approach, same run.

    python benchmarks/ingest.py [--repeat 6]

Builds (once, cached in benchmarks/.work/) a full-account export from real texting data
(chitchat-dataset, every conversation a personal chat, copied `repeat` times: 6 gives ~600 MB and
~1.5 M messages), then runs each approach in its own process and reports wall time and peak RSS.
Target: our whole ingest ≤ 0.5× the original's parse-only time, peak RSS ≤ 300 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# The original article's code path: read the whole export with pandas, then loop over chats and
# messages, calling everyone but the owner "User". Parse and loop are timed separately.
ORIGINAL = r"""
import json, resource, sys, time
import pandas as pd
path, me = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF)  # CPU time of the parse alone, not the imports
t0 = time.perf_counter()
df = pd.read_json(path)
t1 = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
dialogues = []
for chat in df["chats"]["list"]:
    if chat["type"] != "personal_chat":
        continue
    current = []
    for m in chat["messages"]:
        if m["type"] != "message":
            continue
        text = m["text"]
        if isinstance(text, list):
            text = "".join(t if isinstance(t, str) else t["text"] for t in text)
        if not text:
            continue
        who = "Clone" if m.get("from_id") == me else "User"
        if current and current[-1][0] == who:
            current[-1] = (who, current[-1][1] + "\n" + text)
        else:
            current.append((who, text))
    dialogues.append(current)
t2 = time.perf_counter()
print(json.dumps({"parse_s": t1 - t0, "total_s": t2 - t0, "parse_user_s": usage.ru_utime - before.ru_utime,
                  "parse_sys_s": usage.ru_stime - before.ru_stime,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
from llmclone.dataset.ingest import ingest
t0 = time.perf_counter()
stats = ingest([sys.argv[1]], sys.argv[2], progress=False)
t1 = time.perf_counter()
me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
main_mb = me.ru_maxrss / 1024
worker_mb = children.ru_maxrss / 1024  # the largest worker
import os
workers = len(os.sched_getaffinity(0))
print(json.dumps({"total_s": t1 - t0, "rss_mb": main_mb + workers * worker_mb, "main_mb": main_mb,
                  "worker_mb": worker_mb, "workers": workers,
                  "user_s": me.ru_utime + children.ru_utime, "sys_s": me.ru_stime + children.ru_stime,
                  "samples": stats["samples"], "messages": stats["messages"]["used"]}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from chitchat_export import write_export

    export = HERE / ".work" / f"chitchat_x{args.repeat}" / "result.json"
    if not export.exists():
        print(f"building {export} ...", flush=True)
        info = write_export(export, repeat=args.repeat, all_conversations=True)
        (export.parent / "info.json").write_text(json.dumps(info))
    info = json.loads((export.parent / "info.json").read_text())
    print(f"export: {info['bytes'] / 1e6:.0f} MB, {info['messages']:,} messages, {info['chats']:,} personal chats")

    # This shared machine's speed moves by tens of percent between minutes: the two run in turns, `--rounds`
    # times, and each round's ratio uses that round's original.
    for n in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            ours = run(OURS, str(export), str(Path(tmp) / "dataset"))
        original = None if args.skip_original else run(ORIGINAL, str(export), "user100000001")

        print(f"\nround {n}\n{'approach':<48} {'wall s':>7} {'user s':>7} {'sys s':>6} {'peak RSS MB':>12}")
        if original:
            print(f"{'original: pandas.read_json (parse only)':<48} {original['parse_s']:>7.1f} "
                  f"{original['parse_user_s']:>7.1f} {original['parse_sys_s']:>6.1f} {'':>12}")
            print(f"{'original: pandas.read_json + loop':<48} {original['total_s']:>7.1f} {'':>7} {'':>6} "
                  f"{original['rss_mb']:>12.0f}")
        print(f"{'llmclone ingest (parse+dialogues+privacy+write)':<48} {ours['total_s']:>7.1f} {ours['user_s']:>7.1f} "
              f"{ours['sys_s']:>6.1f} {ours['rss_mb']:>12.0f}")
        print(f"  (peak RSS = main {ours['main_mb']:.0f} MB + {ours['workers']} workers x {ours['worker_mb']:.0f} MB,"
              " an upper bound on the sum)")
        print(f"samples written: {ours['samples']}")
        if original:
            ratio = ours["total_s"] / original["parse_s"]
            print(f"our whole ingest / original parse-only: {ratio:.2f}x (target <= 0.5x)")
            print(f"peak RSS (all processes): ours {ours['rss_mb']:.0f} MB vs original {original['rss_mb']:.0f} MB"
                  " (target <= 300 MB)")

if __name__ == "__main__":
    main()
