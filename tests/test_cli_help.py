"""Help texts as a user reads them in an ordinary 80-column terminal."""

from __future__ import annotations

from mario_cli.cli import reflow
from tests.conftest import run_mario


def _description(help_text: str) -> list[list[str]]:
    """The paragraphs between the usage line and the options panel, as their lines."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    paragraphs: list[list[str]] = [[]]
    for line in lines[start:end]:
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [paragraph for paragraph in paragraphs if paragraph]


def test_reflow_joins_lines_and_keeps_paragraphs() -> None:
    doc = """First line.

    A paragraph written over
    two lines.

    Another.
    """
    assert reflow(doc) == "First line.\n\nA paragraph written over two lines.\n\nAnother."


def test_reflow_keeps_what_click_users_lay_out_by_hand() -> None:
    # A plugin's command may use Click's conventions: \b keeps a paragraph's lines, \f
    # hides what follows from help; lists and indented blocks are laid out on purpose.
    doc = """Run it.

    \b
    mario thing --a
    mario thing --b

    Options:
    - one
    - two

    Text joined
    into one line.
    \f
    internal notes
    kept apart
    """
    assert reflow(doc) == (
        "Run it.\n\n\b\nmario thing --a\nmario thing --b\n\nOptions:\n- one\n- two\n\n"
        "Text joined into one line.\n\f\ninternal notes\nkept apart"
    )


def test_help_paragraphs_fill_an_80_column_terminal() -> None:
    for command in (["bench", "env"], ["tune"], ["resume"], ["bench", "learn-eval"]):
        result = run_mario(*command, "--help", env={"COLUMNS": "80"})
        assert result.returncode == 0, result.stderr
        paragraphs = _description(result.stdout)
        assert len(paragraphs) >= 2, result.stdout
        for paragraph in paragraphs:
            # The terminal wraps each paragraph: every line but its last is nearly full,
            # none broken short where the docstring's source line ended.
            for line in paragraph[:-1]:
                assert len(line) >= 60, (command, paragraph)
    result = run_mario("bench", "env", "--help", env={"COLUMNS": "80"})
    text = " ".join(line.strip() for line in result.stdout.splitlines())
    assert "their scaling is split into each env's speed beside the others" in text
