"""Regenerate the paper-schedule grid's report and the blocks of README.md and docs/results.md
that quote it.

    python docs/results/hippocampus/paper-schedule/update_docs.py

Runs `cli.py report` on this folder's result files into report/ beside this script (report.md,
results.csv, the Dice plot), then replaces the text between each pair of markers
`<!-- NAME -->` ... `<!-- end NAME -->` with the part of report.md it quotes:

    paper-schedule table       README.md, docs/results.md: the pooled Dice table
    paper-schedule per-volume  docs/results.md: per-volume Dice / HD95, and the paired
                               comparison with random init
    paper-schedule claims      docs/results.md: the section "The paper's claims"

A file is rewritten only when a block changed, through a temporary file and a rename.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
REPORT = HERE / "report"


def sections(text: str) -> dict[str, str]:
    """report.md split at its '## ' headings; the part before the first is '' (the tables)."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    out = {"": parts[0]}
    for title, body in zip(parts[1::2], parts[2::2]):
        out[title.strip()] = body.strip()
    return out


def tables(text: str) -> list[str]:
    """The Markdown tables of `text`, each with the paragraph just before it."""
    blocks = [b.strip() for b in text.strip().split("\n\n")]
    found = []
    for i, block in enumerate(blocks):
        if block.startswith("|"):
            lead = blocks[i - 1] if i and not blocks[i - 1].startswith(("|", "#")) else ""
            found.append((lead, block))
    return [f"{lead}\n\n{table}" if lead else table for lead, table in found]


def blocks(report: str) -> dict[str, str]:
    parts = sections(report)
    top = tables(parts[""])
    missing = [t for t in ("Against random init, volume by volume", "The paper's claims") if t not in parts]
    if len(top) < 2 or missing:
        raise SystemExit(f"{REPORT / 'report.md'}: expected the pooled and per-volume tables and the sections "
                         f"'Against random init, volume by volume' and 'The paper's claims' (missing: "
                         f"{', '.join(missing) or 'a table'})")
    pooled = top[0].split("\n\n")[-1]  # the table alone: the README and docs say what it holds
    return {
        "paper-schedule table": pooled,
        "paper-schedule per-volume": f"{top[1]}\n\n**Against random init, volume by volume.** "
                                     f"{parts['Against random init, volume by volume']}",
        "paper-schedule claims": parts["The paper's claims"],
    }


def replace_blocks(path: Path, new: dict[str, str]) -> bool:
    """Replace each block `name` of `new` in `path`; every start marker needs its own end marker."""
    text = original = path.read_text()
    for name, body in new.items():
        start, end = f"<!-- {name} -->\n", f"<!-- end {name} -->"
        pattern = re.compile(rf"({re.escape(start)})((?:(?!{re.escape(start)}).)*?)({re.escape(end)})", re.S)
        text, count = pattern.subn(lambda m: m.group(1) + body.strip() + "\n" + m.group(3), text)
        if count != original.count(start):
            raise SystemExit(f"{path}: {original.count(start)} '{start.strip()}' markers but {count} closed by "
                             f"'{end}'; nothing written")
    if text == original:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def main() -> None:
    subprocess.run([sys.executable, "cli.py", "report", str(HERE.relative_to(REPO)), "--out",
                    str(REPORT.relative_to(REPO))], cwd=REPO, check=True)
    new = blocks((REPORT / "report.md").read_text())
    for doc in (REPO / "README.md", REPO / "docs" / "results.md"):
        present = {k: v for k, v in new.items() if f"<!-- {k} -->" in doc.read_text()}
        print(f"{doc.relative_to(REPO)}: {'updated' if replace_blocks(doc, present) else 'unchanged'} "
              f"({', '.join(present) or 'no blocks'})")


if __name__ == "__main__":
    main()
