"""The README's promises: its Python snippet runs as written, and every table in README.md and docs/ carries the
command that produced it.

The rule for tables: a markdown table (a `|` row followed by a `|---` row) needs, within `COMMAND_WINDOW` lines
above its header, a command that produced it: a line starting `Command: ` or a command line (`python ...`,
`accelerate launch ...`) inside a ```bash fence. A table that is not a measurement (the settings of a config, a
summary whose rows link to their studies) says so with a `<!-- no-command: reason -->` line right above it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_WINDOW = 40
COMMAND_LINE = re.compile(r"^\s*(nice -n \d+ )?(accelerate launch|python|for seed in) ")
SNIPPET = re.compile(r"<!-- api-snippet -->\s*```python\n(.*?)```", re.DOTALL)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tables_without_command(text: str) -> list[int]:
    """1-based line numbers of the table headers in `text` with no command within the window above, and no
    `no-command` marker right above."""
    lines = text.splitlines()
    command_lines, fence = set(), None
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if line.startswith("Command: ") or (fence == "bash" and COMMAND_LINE.match(line)):
            command_lines.add(number)
    missing = []
    for number in range(len(lines) - 1):
        header, rule = lines[number].strip(), lines[number + 1].strip()
        if not (header.startswith("|") and re.match(r"^\|\s*:?-{3,}", rule)):
            continue
        if number > 0 and lines[number - 1].startswith("<!-- no-command:"):
            continue
        if not any(number - COMMAND_WINDOW <= c < number for c in command_lines):
            missing.append(number + 1)
    return missing


def test_the_table_rule_itself():
    measured = "Command: `python studies/x.py`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert tables_without_command(measured) == []
    fenced = "```bash\npython studies/x.py --seeds 0 1\n```\n\n| a |\n|---|\n"
    assert tables_without_command(fenced) == []
    assert tables_without_command("Some text.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n") == [3]
    far = "Command: `python x.py`\n" + "text\n" * COMMAND_WINDOW + "| a |\n|---|\n"
    assert tables_without_command(far) == [COMMAND_WINDOW + 2]
    assert tables_without_command("<!-- no-command: settings -->\n| a |\n|---|\n") == []
    python_fence = "```python\npython = 1\n```\n| a |\n|---|\n"  # only bash fences hold commands
    assert tables_without_command(python_fence) == [4]


@pytest.mark.parametrize("document", documents(), ids=lambda path: path.name)
def test_every_table_carries_its_command(document):
    missing = tables_without_command(document.read_text())
    assert not missing, (
        f"{document.relative_to(ROOT)}: the tables at lines {missing} have no command within {COMMAND_WINDOW} lines "
        "above (a `Command: ` line or a ```bash block), nor a `<!-- no-command: reason -->` line right above."
    )


def test_no_hard_coded_comparison_in_the_benchmark_output():
    # A benchmark prints what it measured, never a number typed into the script as if measured beside it.
    assert "today 0.94" not in (ROOT / "benchmarks" / "bench_distill.py").read_text()


def test_readme_front_page_is_short_and_links_to_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]*)?\)", readme):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    assert "<!-- test-command -->" in readme and "<!-- /test-command -->" in readme


def test_readme_python_snippet_runs_as_written(tmp_path):
    snippets = SNIPPET.findall((ROOT / "README.md").read_text())
    assert len(snippets) == 1, "README.md needs exactly one ```python block right after <!-- api-snippet -->"
    (tmp_path / "snippet.py").write_text(snippets[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    saved = tmp_path / "student-kd"
    assert (saved / "config.json").is_file() and (saved / "model.safetensors").is_file()
    assert "train_loss" in result.stdout + result.stderr  # the Trainer trained and reported its loss
