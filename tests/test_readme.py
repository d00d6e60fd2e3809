"""Every ```python block of the README runs as written, each in a fresh namespace, in a temporary working
directory (the files it writes land there). A block states itself the imports and small inputs a reader
would add; a new block is picked up, and must run, without touching this file."""

import re
from pathlib import Path

import pytest
import torch.distributed as dist

from helpers import free_port

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[tuple[str, int, str]]:
    """(section heading, line number of its first line, code) of every ```python block."""
    blocks, heading, start, language = [], "", 0, None  # language: of the fenced block we are in
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if language is None and line.startswith("```"):
            language, start = line[3:].strip(), n
        elif language is not None and line.strip() == "```":
            if language in ("python", "py"):
                blocks.append((heading, start + 1, "\n".join(lines[start:n - 1]) + "\n"))
            language = None
        elif language is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, [h for h, _, _ in BLOCKS]


def test_python_blocks_are_found_as_a_reader_sees_them():
    text = "# A\n```python\nx = 1\n```\n## B\n```bash\n# not a heading\n```\n```python\n# a comment\n\nz = 3\n```\n"
    assert python_blocks(text) == [("A", 3, "x = 1\n"), ("B", 10, "# a comment\n\nz = 3\n")]


@pytest.mark.parametrize("heading,line,code", BLOCKS, ids=[f"{h}:{n}" for h, n, _ in BLOCKS])
def test_python_block_runs(heading, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # what torchrun sets for a process group of one (the DistributedDataParallel block)
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                           WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    try:
        exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__main__"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def code_text(text: str) -> str:
    """The README's code: fenced blocks and inline `code`, one snippet a line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M))
    return "\n".join(fenced + inline)


def test_scripts_and_make_targets_the_readme_names_exist():
    """Every .py path in the README's code (not globs) is a file of the checkout; every `make` target is
    one of the Makefile's."""
    code, root = code_text(README.read_text()), README.parent
    scripts = set(re.findall(r"(?<![\w./{*-])((?:[\w-]+/)+[\w-]+\.py)\b", code))
    assert {"examples/digits_demo.py", "benchmarks/bench_ops.py", "pyprune_fast/ops.py"} <= scripts
    assert sorted(s for s in scripts if not (root / s).is_file()) == []
    targets = set(re.findall(r"^make ([\w-]+)", code, re.M))
    defined = set(re.findall(r"^([\w-]+):", (root / "Makefile").read_text(), re.M))
    assert "test" in targets and sorted(targets - defined) == []
