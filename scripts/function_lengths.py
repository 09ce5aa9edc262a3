"""Functions over 60 lines in the given folders, longest first (issue 22's measure).

Usage: .venv/bin/python scripts/function_lengths.py flows tasks rsolv_staging sandbox
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(roots: list[str]) -> int:
    rows = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > 60:
                        rows.append((length, f"{path}:{node.lineno} {node.name}"))
    for length, where in sorted(rows, reverse=True):
        print(length, where)
    over = [n for n, _ in rows]
    long, longer = sum(n > 80 for n in over), sum(n > 100 for n in over)
    print(f"{len(over)} over 60; {long} over 80; {longer} over 100")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["flows", "tasks", "rsolv_staging", "sandbox"]))
