"""The README's code runs as written (issue 15, item 5).

Every fenced ```python block of README.md is run on its own, in a fresh Python process whose
working directory is a temporary folder: a block must bring its own imports and its own model,
so a snippet that relies on a name it never defines (or on an earlier block) fails here. Blocks
fenced otherwise (```bash, ```text, a bare ```) are not run. A block that imports an optional
library (transformers, timm, torchvision) is skipped when that library is missing, as
``pytest.importorskip`` would.
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
OPTIONAL = ("transformers", "timm", "torchvision")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    heading: str  # the nearest section heading above the block
    line: int  # README line of the block's first code line (1-based)
    code: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"{slug}-L{self.line}"


def code_blocks(text: str, language: str = "python") -> list[Block]:
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
                blocks.append(Block(heading, start, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"a ``` fence opened before line {start} is never closed"
    return blocks


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``block`` as a script in a fresh interpreter with ``cwd`` as its working folder.

    The script is padded with blank lines so that a traceback's line numbers are README lines.
    """
    script = cwd / f"README_md_L{block.line}.py"
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


BLOCKS = code_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    # The parser found them: the README shows Python in several sections.
    assert len(BLOCKS) >= 5, [b.id for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path):
    for library in OPTIONAL:
        if re.search(rf"^\s*(from|import)\s+{library}\b", block.code, re.MULTILINE):
            pytest.importorskip(library)
    result = run_block(block, tmp_path)
    assert result.returncode == 0, (
        f"README.md's python block at line {block.line} (section {block.heading!r}) failed "
        f"with exit code {result.returncode}:\n{result.stderr[-4000:]}"
    )


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
    assert [b.id for b in blocks] == ["use-it-L10", "broken-L28"]
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
