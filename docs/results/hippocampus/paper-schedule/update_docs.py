"""Regenerate the paper-schedule grid's report and the blocks of README.md and docs/results.md
that quote it.

    python docs/results/hippocampus/paper-schedule/update_docs.py

Writes the report of `cli.py report` on this folder's result files into report/ beside this script (report.md,
results.csv, the Dice plot), then replaces the text between each pair of markers
`<!-- NAME -->` ... `<!-- end NAME -->` with the part of report.md it quotes:

    paper-schedule table       README.md, docs/results.md: the pooled Dice table
    paper-schedule paired      README.md: the per-volume differences from random init (table alone)
    paper-schedule per-volume  docs/results.md: per-volume Dice / HD95, and the paired
                               comparison with random init
    paper-schedule claims      docs/results.md: the section "The paper's claims"

A file is rewritten only when a block changed, through a temporary file and a rename.
A block a file has no markers for is left out of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tfsemiseg.io_utils import atomic_write_text
from tfsemiseg.reporting import write_report

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
    paired = tables(parts["Against random init, volume by volume"])
    if not paired:
        raise SystemExit(f"{REPORT / 'report.md'}: no table under 'Against random init, volume by volume'")
    return {
        "paper-schedule table": pooled,
        "paper-schedule paired": paired[-1].split("\n\n")[-1],
        "paper-schedule per-volume": f"{top[1]}\n\n**Against random init, volume by volume.** "
                                     f"{parts['Against random init, volume by volume']}",
        "paper-schedule claims": parts["The paper's claims"],
    }


def replace_blocks(path: Path, new: dict[str, str]) -> tuple[list[str], bool]:
    """Replace each block `name` of `new` that `path` has markers for (every start marker needs
    its own end marker); (the names of those blocks, whether the file changed)."""
    text = original = path.read_text()
    present = [name for name in new if f"<!-- {name} -->\n" in original]
    for name in present:
        body, start, end = new[name], f"<!-- {name} -->\n", f"<!-- end {name} -->"
        pattern = re.compile(rf"({re.escape(start)})((?:(?!{re.escape(start)}).)*?)({re.escape(end)})", re.S)
        text, count = pattern.subn(lambda m: m.group(1) + body.strip() + "\n" + m.group(3), text)
        if count != original.count(start):
            raise SystemExit(f"{path}: {original.count(start)} '{start.strip()}' markers but {count} closed by "
                             f"'{end}'; nothing written")
    if text != original:
        atomic_write_text(path, text)
    return present, text != original


def main() -> None:
    os.chdir(REPO)  # the report names its folder as given, relative to the repository
    new = blocks(write_report(HERE.relative_to(REPO), REPORT.relative_to(REPO))["markdown"].read_text())
    for doc in (Path("README.md"), Path("docs/results.md")):
        present, changed = replace_blocks(doc, new)
        print(f"{doc}: {'updated' if changed else 'unchanged'} ({', '.join(present) or 'no blocks'})")


if __name__ == "__main__":
    main()
