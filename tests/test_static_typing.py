"""mypy and pyright see the real input and output types through the typed API.

The fixture files under ``tests/fixtures/typing/`` are checked, never run:

* ``typing_ok.py`` - correct code (``durable(...)``, ``.call``, ``start``, ``run``,
  ``wait`` + ``match OrchestrationStatus.Completed(output=x)``, every helper): no errors;
* ``typing_bad_args.py`` - wrong argument types; each line marked ``# E`` must be reported;
* ``typing_bad_output.py`` - wrong uses of outputs; ``# E`` lines by both checkers,
  ``# E-pyright`` lines by pyright (mypy infers ``Any`` for class-pattern captures);
* ``typing_reveal.py`` - ``reveal_type`` lines marked ``# T: <type>`` (``# T-pyright``).

Both checkers run once per session (in parallel), with ``cwd`` = the repository
root so that they see the editable install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "typing"
CHECKED = ["typing_common.py", "typing_ok.py", "typing_bad_args.py", "typing_bad_output.py", "typing_reveal.py"]
VENV_BIN = Path(sys.executable).parent
PYRIGHT = str(VENV_BIN / "pyright")
CHECKERS = ["mypy", "pyright"]


@dataclass(frozen=True)
class Diagnostic:
    file: str  # base name
    line: int  # 1-based
    severity: str  # "error" or "note"/"information"
    message: str


@dataclass
class CheckerRun:
    name: str
    diagnostics: list[Diagnostic]
    raw: str

    def errors(self, file: str) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.file == file and d.severity == "error"]

    def error_lines(self, file: str) -> set[int]:
        return {d.line for d in self.errors(file)}

    def revealed(self, file: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for d in self.diagnostics:
            if d.file != file or d.severity not in ("note", "information"):
                continue
            m = re.search(r'(?:Revealed type is|Type of ".*" is) "(.*)"$', d.message)
            if m:
                out[d.line] = _short(m.group(1))
        return out


def _short(type_text: str) -> str:
    """``duroxide_runtime.status.OrchestrationStatus[typing_common.Receipt]`` -> ``OrchestrationStatus[Receipt]``."""
    return re.sub(r"\b(?:\w+\.)+(\w)", r"\1", type_text).replace("builtins.", "")


def markers(file: str, tag: str) -> dict[int, str]:
    """Lines carrying ``# <tag>: text`` in a fixture file -> text."""
    out = {}
    pattern = re.compile(rf"#\s*{re.escape(tag)}:\s*(.*)$")
    for number, line in enumerate((FIXTURES / file).read_text().splitlines(), start=1):
        m = pattern.search(line)
        if m:
            out[number] = m.group(1).strip()
    return out


def _parse_mypy(output: str) -> list[Diagnostic]:
    diags = []
    for line in output.splitlines():
        m = re.match(r"^(.*?):(\d+): (error|note): (.*)$", line)
        if m:
            diags.append(Diagnostic(os.path.basename(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return diags


def _parse_pyright(output: str) -> list[Diagnostic]:
    data = json.loads(output)
    return [Diagnostic(os.path.basename(d["file"]), d["range"]["start"]["line"] + 1, d["severity"],
                       d["message"].splitlines()[0]) for d in data.get("generalDiagnostics", [])]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CheckerRun]:
    files = [str(FIXTURES.relative_to(ROOT) / f) for f in CHECKED]
    cache = tmp_path_factory.mktemp("mypy-cache")
    env = {**os.environ, "MYPYPATH": str(FIXTURES.relative_to(ROOT))}
    mypy = subprocess.Popen(
        [sys.executable, "-m", "mypy", "--explicit-package-bases", "--no-error-summary", "--show-absolute-path",
         "--cache-dir", str(cache), *files],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pyright = subprocess.Popen(
        [PYRIGHT, "--outputjson", "--pythonpath", sys.executable, *files],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mypy_out, _ = mypy.communicate(timeout=110)
    pyright_out, pyright_err = pyright.communicate(timeout=110)
    assert "errors prevented further checking" not in mypy_out, mypy_out
    assert pyright_out.strip().startswith("{"), pyright_out + pyright_err
    return {"mypy": CheckerRun("mypy", _parse_mypy(mypy_out), mypy_out),
            "pyright": CheckerRun("pyright", _parse_pyright(pyright_out), pyright_out)}


def _listing(run: CheckerRun, file: str) -> str:
    return "\n".join(f"{d.file}:{d.line}: {d.severity}: {d.message}" for d in run.diagnostics if d.file == file)


@pytest.mark.parametrize("checker", CHECKERS)
def test_fixture_files_are_checked(checker: str, checked: dict[str, CheckerRun]) -> None:
    # Guards the other tests against a checker that silently checked nothing:
    # the reveal file must produce one revealed type per reveal_type line.
    reveal_lines = set(markers("typing_reveal.py", "T")) | set(markers("typing_reveal.py", "T-pyright"))
    assert set(checked[checker].revealed("typing_reveal.py")) == reveal_lines, checked[checker].raw


@pytest.mark.parametrize("checker", CHECKERS)
def test_correct_code_is_clean(checker: str, checked: dict[str, CheckerRun]) -> None:
    run = checked[checker]
    for file in ("typing_ok.py", "typing_common.py", "typing_reveal.py"):
        assert run.errors(file) == [], f"{checker} reported errors in {file}:\n{_listing(run, file)}"


@pytest.mark.parametrize("checker", CHECKERS)
def test_wrong_argument_types_are_reported_on_their_lines(checker: str, checked: dict[str, CheckerRun]) -> None:
    run = checked[checker]
    expected = markers("typing_bad_args.py", "E")
    assert len(expected) == 9
    reported = run.error_lines("typing_bad_args.py")
    missing = {line: why for line, why in expected.items() if line not in reported}
    assert not missing, f"{checker} missed {missing}:\n{_listing(run, 'typing_bad_args.py')}"
    assert reported == set(expected), f"{checker} reported unexpected lines:\n{_listing(run, 'typing_bad_args.py')}"
    # The messages (with their notes) name the declared parameter type.
    for line, why in expected.items():
        text = " ".join(d.message for d in run.diagnostics if d.file == "typing_bad_args.py" and d.line == line)
        if "input type" in why:
            assert "Order" in text, (line, text)
        elif "argument type" in why:
            assert "Order" in text or "float" in text, (line, text)


@pytest.mark.parametrize("checker", CHECKERS)
def test_wrong_use_of_outputs_is_reported_on_their_lines(checker: str, checked: dict[str, CheckerRun]) -> None:
    run = checked[checker]
    both = markers("typing_bad_output.py", "E")
    pyright_only = markers("typing_bad_output.py", "E-pyright")
    assert len(both) == 8 and len(pyright_only) == 1
    reported = run.error_lines("typing_bad_output.py")
    missing = {line: why for line, why in both.items() if line not in reported}
    assert not missing, f"{checker} missed {missing}:\n{_listing(run, 'typing_bad_output.py')}"
    if checker == "pyright":
        assert reported == set(both) | set(pyright_only), _listing(run, "typing_bad_output.py")
    else:
        # mypy types `case OrchestrationStatus.Completed(output=x)` captures as Any today, so
        # the pyright-only line is neither required nor forbidden here.
        assert reported - set(pyright_only) == set(both), _listing(run, "typing_bad_output.py")


@pytest.mark.parametrize("checker", CHECKERS)
def test_inferred_types_through_durable_call_and_helpers(checker: str, checked: dict[str, CheckerRun]) -> None:
    run = checked[checker]
    revealed = run.revealed("typing_reveal.py")
    expected = markers("typing_reveal.py", "T")
    if checker == "pyright":
        expected |= markers("typing_reveal.py", "T-pyright")
    assert {line: revealed.get(line) for line in expected} == expected, _listing(run, "typing_reveal.py")
