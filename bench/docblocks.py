"""Generated blocks inside hand-written pages: the text between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` is rewritten from result files, so a figure quoted in README.md or a docs page comes
from the same data as the benchmark tables and cannot drift from them."""
from __future__ import annotations

import re
from pathlib import Path

from pretrain.ground.atomic import write_text


def splice(path: Path, name: str, text: str) -> bool:
    """Replace the block `name` in `path` with `text`; False (and nothing written) when the page has no such block."""
    page = path.read_text()
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    pattern = re.compile(r"^([ \t]*)" + re.escape(start) + r".*?" + re.escape(end), re.S | re.M)
    found = pattern.search(page)
    if not found:
        return False
    indent = found.group(1)  # a block inside a list item keeps the item's indentation
    body = "\n".join(indent + line if line else line for line in text.strip().splitlines())
    new = pattern.sub(lambda _: f"{indent}{start}\n{body}\n{indent}{end}", page, count=1)
    if new != page:
        write_text(path, new)
    return True


def block(path: Path, name: str) -> str | None:
    """The current text of block `name` in `path` (None when there is none): what a check compares."""
    m = re.search(r"^([ \t]*)" + re.escape(f"<!-- generated:{name} -->") + r"\n?(.*?)\n?[ \t]*"
                  + re.escape(f"<!-- /generated:{name} -->"), path.read_text(), re.S | re.M)
    if not m:
        return None
    indent = m.group(1)
    return "\n".join(line[len(indent):] if line.startswith(indent) else line for line in m.group(2).splitlines())
