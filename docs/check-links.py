#!/usr/bin/env python3
"""Checks that every relative link and #anchor in the project's Markdown files resolves.

Run from anywhere: `python3 docs/check-links.py`. Anchors follow GitHub's heading slugs.
Prints each broken link and exits 1 if there is one. Called by nothing; run it after moving
documentation around.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ["README.md", "docs/*.md", "tests/README.md", "fuzz/README.md", "benches/README.md",
         "examples/README.md"]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text):
    """The lines outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "``", line)


def slugs(path):
    """GitHub's anchors for the headings of one Markdown file."""
    seen, out = {}, set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def main():
    files = sorted({p for pattern in FILES for p in ROOT.glob(pattern)})
    broken = links = 0
    for md in files:
        for line in prose_lines(md.read_text()):
            for target in LINK.findall(line):
                links += 1
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                path, _, anchor = target.partition("#")
                dest = (md.parent / path).resolve() if path else md
                problem = None
                if not dest.exists():
                    problem = "no such file"
                elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                    problem = "no such anchor"
                if problem:
                    broken += 1
                    print(f"{md.relative_to(ROOT)}: {target}: {problem}")
    print(f"{len(files)} files, {links} links checked, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
