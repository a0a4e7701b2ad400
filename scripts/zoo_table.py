"""Prints the markdown table of the weights trained here, from the zoo cards.

    .venv/bin/python scripts/zoo_table.py      # the table in docs/benchmarks.md
"""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    rows = []
    for path in sorted((ROOT / "zoo").glob("*.json")):
        card = json.loads(path.read_text())
        weights = card.get("weights", {})
        if weights.get("source") != "trained here":
            continue
        m, t = card["metrics"], weights["training"]
        rows.append(
            f"| `{card['name']}` | {card['method']} | {t['epochs']} | {t['train_minutes']} | "
            f"{m['knn200'] * 100:.2f}% | {m['nn20'] * 100:.2f}% | {m['linear_probe'] * 100:.2f}% | "
            f"{m['knn200_quick'] * 100:.2f}% | `{t['command']}` |"
        )
    print("| card | method | epochs | train min | kNN-200 | 20-NN | linear probe | kNN-200 quick | command |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
