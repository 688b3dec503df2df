"""The code and ``python -m gessl.train --help`` say what the code does, not when it changed
(/work/shared/design.md; history goes to CHANGELOG.md, measurements to docs/results.md): no month
name, no issue number ("#17") and no "until"/"since" a date in any module of gessl, baselines,
tasks or analysis, nor in the training CLI's help."""
import re
from pathlib import Path

import pytest

from tests.helpers import REPO, train_cli

PACKAGES = ("gessl", "baselines", "tasks", "analysis")
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# "May" alone is also a modal verb at the start of a sentence: it counts with a day or a year beside it
DATED = re.compile(
    rf"\b(?:{MONTHS.replace('May|', '')})\b"             # a month name other than May
    r"|\b\d{1,2} May\b|\bMay \d{4}\b"                     # May as a date
    r"|(?<![\w&])#\d+\b"                                  # an issue number
    rf"|\b(?i:until|since) (?:{MONTHS}|\d{{4}})\b")     # history: "until December", "Since 2026"


def dated(text):
    """The phrases of ``text`` that date it: month names, issue numbers, "until/since" a date."""
    return [m.group(0) for m in DATED.finditer(text)]


@pytest.mark.parametrize("text, found", [
    ("0.001 for every other (0.01 until December 2026)", ["until December"]),
    ("Since 2026 the defaults are", ["Since 2026"]),
    ("the December defaults", ["December"]),
    ("see issue #17, point 2", ["#17"]),
    ("as of 3 May, and in May 2026", ["3 May", "May 2026"]),
    ("Wait until every process gets here; train until total_steps", []),
    ("May be zero; colour #1f77b4; 95 % interval; a march", []),
])
def test_dated_finds_dates_and_issue_numbers_only(text, found):
    assert dated(text) == found


def modules():
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_modules_are_undated():
    offenders = [f"{p.relative_to(REPO)}:{n}: {phrase}"
                 for p in modules() for n, line in enumerate(p.read_text().splitlines(), 1)
                 for phrase in dated(line)]
    assert len(modules()) > 50
    assert not offenders, "\n".join(offenders)


def test_train_help_is_undated():
    result = train_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "--inner-lr" in result.stdout and "--music-ti" in result.stdout   # every base's options shown
    assert not dated(result.stdout), dated(result.stdout)
