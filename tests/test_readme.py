"""The documentation's code runs as written (issue 15, item 5), and its links lead somewhere.

Every fenced ```python block of README.md and of every page under docs/ is run on its own, in a
fresh Python process whose working directory is a temporary folder: a block must bring its own
imports and its own model, so a snippet that relies on a name it never defines (or on an earlier
block) fails here. Blocks fenced otherwise (```bash, ```text, a bare ```) are not run. A block
that imports an optional library (transformers, timm, torchvision) is skipped when that library
is missing, as ``pytest.importorskip`` would.

Every relative link of those pages must name a file that exists and, with a ``#fragment``, a
heading of that page (GitHub's anchors), so that moving a section cannot leave a link behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OPTIONAL = ("transformers", "timm", "torchvision")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    heading: str  # the nearest section heading above the block
    line: int  # page line of the block's first code line (1-based)
    code: str
    page: str = "README.md"  # the page's path relative to the repository root

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"{self.page}:{slug}-L{self.line}"


def code_blocks(text: str, language: str = "python", page: str = "README.md") -> list[Block]:
    """The fenced blocks of ``text`` whose info string is ``language``, in order.

    Headings are only read outside fences (a ``# comment`` inside a block is not one).
    """
    blocks: list[Block] = []
    heading = ""
    fence: str | None = None  # the open fence's marker
    lang = ""
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number + 1, []
            elif heading_match := HEADING.match(line):
                heading = heading_match.group(2)
        elif (
            match
            and not match.group(2)  # a closing fence has no info string
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
        ):
            if lang == language:
                blocks.append(Block(heading, start, "\n".join(body) + "\n", page))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{page}: a ``` fence opened before line {start} is never closed"
    return blocks


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``block`` as a script in a fresh interpreter with ``cwd`` as its working folder.

    The script is padded with blank lines so that a traceback's line numbers are the page's.
    """
    stem = re.sub(r"[^A-Za-z0-9]+", "_", block.page)
    script = cwd / f"{stem}_L{block.line}.py"
    script.write_text("\n" * (block.line - 1) + block.code)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _page_name(path: Path) -> str:
    """``path`` relative to the repository root (its bare name outside it)."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


BLOCKS = [
    block
    for page in PAGES
    for block in code_blocks(page.read_text(encoding="utf-8"), page=_page_name(page))
]


def test_pages_have_python_blocks():
    # The parser found them: the README shows Python, and so do the guides under docs/.
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages, [b.id for b in BLOCKS]
    assert len(pages) >= 5 and len(BLOCKS) >= 6, [b.id for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path):
    for library in OPTIONAL:
        if re.search(rf"^\s*(from|import)\s+{library}\b", block.code, re.MULTILINE):
            pytest.importorskip(library)
    result = run_block(block, tmp_path)
    assert result.returncode == 0, (
        f"{block.page}'s python block at line {block.line} (section {block.heading!r}) failed "
        f"with exit code {result.returncode}:\n{result.stderr[-4000:]}"
    )


# --- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str, *, code_spans: bool = False) -> str:
    """``text`` with its fenced blocks blanked (line numbers kept) and, unless ``code_spans``,
    its inline code replaced by a word (a link inside backticks is not a link)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, line = match.group(1), ""
        elif fence is not None:
            closing = match and not match.group(2) and match.group(1)[0] == fence[0]
            if closing and len(match.group(1)) >= len(fence):
                fence = None
            line = ""
        lines.append(line if code_spans else CODE_SPAN.sub("code", line))
    return "\n".join(lines)


def anchors(text: str) -> set[str]:
    """The ``#fragment`` each heading of ``text`` gets on GitHub (a repeated one gets ``-1`` ...)."""
    found: set[str] = set()
    for line in prose(text, code_spans=True).splitlines():
        if match := HEADING.match(line):
            slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
            unique, n = slug, 0
            while unique in found:
                n += 1
                unique = f"{slug}-{n}"
            found.add(unique)
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file or heading does not exist."""
    text = prose(page.read_text(encoding="utf-8"))  # the same lines, code left out
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        line = text.count("\n", 0, match.start()) + 1
        if not dest.exists():
            broken.append(f"{_page_name(page)}:{line}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text("utf-8")):
            broken.append(f"{_page_name(page)}:{line}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[_page_name(p) for p in PAGES])
def test_links_lead_somewhere(page: Path):
    assert broken_links(page) == []


# --- the harness itself ------------------------------------------------------------------------


SAMPLE = """\
# Title

```bash
exit 3   # shell, never run
```

## Use it

```python
import os
# a comment, not a heading
print(os.getcwd())
```

````markdown
```python
raise SystemExit("inside a longer fence: not a block of its own")
```
````

```text
slim(model, ratio, example_inputs)
```

### Broken

```python
print(resnet50())
```
"""


def test_only_python_blocks_are_collected():
    blocks = code_blocks(SAMPLE)
    assert [(b.heading, b.line) for b in blocks] == [("Use it", 10), ("Broken", 28)]
    assert blocks[0].code == "import os\n# a comment, not a heading\nprint(os.getcwd())\n"
    assert [b.id for b in blocks] == ["README.md:use-it-L10", "README.md:broken-L28"]
    assert code_blocks(SAMPLE, page="docs/x.md")[0].id == "docs/x.md:use-it-L10"
    assert len(code_blocks(SAMPLE, "bash")) == 1


def test_a_block_runs_in_the_temporary_folder_and_a_broken_one_fails(tmp_path: Path):
    ok, broken = code_blocks(SAMPLE)
    result = run_block(ok, tmp_path)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == tmp_path.resolve()

    result = run_block(broken, tmp_path)
    assert result.returncode != 0
    # The traceback points at the README's line.
    assert "NameError: name 'resnet50' is not defined" in result.stderr
    assert "line 28" in result.stderr


def test_links_are_checked_against_files_and_headings(tmp_path: Path):
    (tmp_path / "other.md").write_text('# Other\n\n## round_to="auto"\n\n## Twice\n\n## Twice\n')
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#round_toauto) [dup](other.md#twice-1) [self](#a-b)\n"
        "## A `b`\n"
        "[gone](other.md#nope) and ![img](missing.png), [web](https://example.com/x#y)\n"
        "```\n[fenced](fenced.md)\n```\n"
        "`[code](code.md)` [wrapped\ntext](other.md#twice-2)\n"
    )
    assert broken_links(page) == [
        "page.md:3: other.md#nope (no such heading)",
        "page.md:3: missing.png (no such file)",
        "page.md:7: other.md#twice-2 (no such heading)",
    ]
