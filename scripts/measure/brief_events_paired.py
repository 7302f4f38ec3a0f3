"""Made docs/method.md's "Brief events" paired-difference tables (issue 27): per testbed, ratio and question type, the
accuracy of a Tango variant minus default Tango's on the same questions, with the paired standard error, from the
per-question outcomes (`correct`) that `tango-prune eval --json` keeps.

    .venv/bin/python scripts/measure/brief_events_paired.py out/issue27/judge_v1.json out/issue27/judge_v2.json \
        [--method tango:events=2] [--against tango]

Question i of eval's questions is of type TYPES[i % 5] (tango_prune.testbed.data.generate).
"""
from __future__ import annotations

import argparse
import json
import math

from tango_prune.testbed.data import TYPES


def paired(a: list[int], b: list[int]) -> tuple[float, float]:
    """Mean of a - b and its standard error (paired: per-question differences)."""
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
    return mean, se


def table(path: str, method: str, against: str) -> str:
    data = json.loads(open(path).read())
    rows = {(r["method"], r["retention"]): r for r in data["results"]}
    lines = [f"{data['model']} (n = {data['n']}, seed {data['seed']}): {method} minus {against}, paired standard error",
             "| r | all | " + " | ".join(TYPES) + " |", "|---" * (len(TYPES) + 2) + "|"]
    for (m, r), row in sorted(rows.items(), key=lambda kv: kv[0][1]):
        if m != method or (against, r) not in rows:
            continue
        base = rows[(against, r)]["correct"]
        cells = [paired(row["correct"], base)]
        for k, t in enumerate(TYPES):
            idx = range(k, len(base), len(TYPES))
            cells.append(paired([row["correct"][i] for i in idx], [base[i] for i in idx]))
        lines.append(f"| {r:g} | " + " | ".join(f"{d:+.3f} +- {s:.3f}" for d, s in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+")
    p.add_argument("--method", default="tango:events=2")
    p.add_argument("--against", default="tango")
    a = p.parse_args()
    for path in a.json:
        print(table(path, a.method, a.against), end="\n\n")


if __name__ == "__main__":
    main()
