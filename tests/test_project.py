"""The project's own contract: README's test command is what CI runs."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    return [
        line.strip() for line in text.splitlines() if line.startswith("    python3 -m venv .venv")
    ]


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    main_cmd, test_cmd = cmds
    assert "main.py" in main_cmd and "pytest" in test_cmd
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert re.sub(r"\s+", " ", test_cmd) in re.sub(r"\s+", " ", ci)
