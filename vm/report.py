"""Print the table of cgroup v2 limits the VM measured (``v2-results.json``), for the log."""

from __future__ import annotations

import json
import os
import sys


def main(results: str) -> int:
    path = os.path.join(results, "v2-results.json")
    if not os.path.exists(path):
        print("vm: no v2-results.json")
        return 1
    with open(path) as fh:
        rows = json.load(fh)
    widths = [
        max(len(r[k]) for r in rows + [dict(limit="limit", target="target", measured="measured")])
        for k in ("limit", "target", "measured")
    ]
    line = "| {:<{}} | {:<{}} | {:<{}} | {} |"
    print(line.format("limit", widths[0], "target", widths[1], "measured", widths[2], "ok"))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|----|")
    for r in rows:
        print(
            line.format(
                r["limit"],
                widths[0],
                r["target"],
                widths[1],
                r["measured"],
                widths[2],
                "yes" if r["ok"] else "NO",
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
