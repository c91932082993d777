"""mypy and pyright see the types of typed events, state, updates and streams.

The fixtures ``typing_interaction_ok.py`` (correct code: no errors) and
``typing_interaction_bad.py`` (each line marked ``# E`` must be reported, and only
those) are checked, never run; see ``test_static_typing.py`` for the checkers' setup.
"""

from __future__ import annotations

import pytest

from .test_static_typing import CheckerRun, markers, run_checkers

pytestmark = pytest.mark.timeout(120)

FILES = ["typing_interaction_ok.py", "typing_interaction_bad.py"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CheckerRun]:
    return run_checkers(FILES, tmp_path_factory.mktemp("mypy-cache"))


@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_correct_uses_are_clean_and_each_wrong_type_is_reported_on_its_line(
        checker: str, checked: dict[str, CheckerRun]) -> None:
    run = checked[checker]
    assert run.errors("typing_interaction_ok.py") == [], run.raw
    expected = markers("typing_interaction_bad.py", "E")
    assert len(expected) == 18
    assert run.error_lines("typing_interaction_bad.py") == set(expected), run.raw
