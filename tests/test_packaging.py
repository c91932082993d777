"""What a stranger installing duroxide from the package index gets.

* The licence: a LICENSE file, PEP 639 metadata (``License-Expression``,
  ``License-File``) and the file itself in the wheel; authors, classifiers that
  PyPI accepts, project URLs.
* asyncpg is the ``postgres`` extra: without it ``import duroxide_runtime`` and the
  SQLite quick start work, and asking for PostgreSQL (``PostgresProvider.new``,
  ``duroxide_main(provider="postgres")``, the ``duroxide`` tool) raises a
  ``ConfigurationError`` that names the extra. Checked in real subprocesses whose
  imports cannot find asyncpg (a meta-path blocker loaded by ``sitecustomize``).
* Every dependency has a lower bound, which ``.ci/run`` installs once
  (``uv pip install --resolution lowest-direct``) to run the suite against.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trove_classifiers
from packaging.requirements import Requirement

from .support import PG_URL, clean_env, dedent_src

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REPO = "https://github.com/duroxide/duroxide-python"
EXTRA_HINT = "pip install 'duroxide[postgres]'"


# -- the wheel's metadata --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel `pip install .` builds (with the installed backend: no network)."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("duroxide-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile) -> list[tuple[str, str]]:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    head = wheel.read(name).decode().split("\n\n", 1)[0]
    return [(k, v) for k, _, v in (line.partition(": ") for line in head.splitlines())]


def _field(wheel: zipfile.ZipFile, key: str) -> list[str]:
    return [v for k, v in _metadata(wheel) if k == key]


def test_license_file_and_metadata(wheel: zipfile.ZipFile) -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the duroxide for Python authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert _field(wheel, "License-Expression") == ["MIT"]
    assert _field(wheel, "License-File") == ["LICENSE"]
    shipped = next(n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
    assert wheel.read(shipped).decode() == text
    # PEP 639: with a licence expression, no "License ::" classifier and no legacy License field.
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]
    assert _field(wheel, "License") == []


def test_authors_classifiers_and_urls(wheel: zipfile.ZipFile) -> None:
    assert _field(wheel, "Author") == ["duroxide for Python authors"]
    classifiers = _field(wheel, "Classifier")
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, f"PyPI rejects unknown classifiers: {unknown}"
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    urls = dict(u.split(", ", 1) for u in _field(wheel, "Project-URL"))
    assert urls["Homepage"] == REPO and urls["Issues"] == f"{REPO}/issues"
    assert urls["Documentation"] == f"{REPO}/tree/main/docs"


def test_asyncpg_is_the_postgres_extra(wheel: zipfile.ZipFile) -> None:
    requires = [Requirement(r) for r in _field(wheel, "Requires-Dist")]
    asyncpg = {str(r.marker) for r in requires if r.name == "asyncpg"}
    assert asyncpg == {'extra == "postgres"', 'extra == "test"'}, asyncpg
    assert "postgres" in _field(wheel, "Provides-Extra")


def test_build_backend_supports_pep_639() -> None:
    # hatchling reads `license = "MIT"` + `license-files` from 1.27 on; an older one fails the build.
    (backend,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert backend.name == "hatchling" and backend.specifier.contains("1.27") and \
        not backend.specifier.contains("1.26.3")


def test_every_dependency_has_a_lower_bound() -> None:
    """`--resolution lowest-direct` in .ci/run installs each bound, so each must be one."""
    requirements = [*PROJECT["dependencies"], *(r for rs in PROJECT["optional-dependencies"].values() for r in rs),
                    *PYPROJECT["build-system"]["requires"]]
    unbounded = [r for r in requirements if not any(s.operator in (">=", "==", "~=")
                                                    for s in Requirement(r).specifier)]
    assert not unbounded, f"no lower bound: {unbounded}"


# -- without asyncpg ---------------------------------------------------------------------------

_BLOCKER = dedent_src('''
    """Loaded at start-up (it is on PYTHONPATH): asyncpg cannot be imported, as if never installed."""
    import sys


    class _NoAsyncpg:
        def find_spec(self, name, path=None, target=None):
            if name == "asyncpg" or name.startswith("asyncpg."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, _NoAsyncpg())
''')


@pytest.fixture
def no_asyncpg(tmp_path: Path) -> dict[str, str]:
    """The environment of a process that cannot import asyncpg (and runs outside the checkout)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(_BLOCKER)
    return clean_env(PYTHONPATH=str(hide))


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", dedent_src(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_import_and_sqlite_quick_start_work_without_asyncpg(no_asyncpg: dict[str, str], tmp_path: Path) -> None:
    probe = _python("""
        try:
            import asyncpg
        except ModuleNotFoundError:
            print("asyncpg hidden")
        import duroxide_runtime, duroxide_macros.prelude
        from duroxide_runtime import PostgresProvider
        print("imported", PostgresProvider.__name__)
    """, no_asyncpg, tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["asyncpg hidden", "imported PostgresProvider"]
    # The README's first command runs the hello-world example on SQLite: no asyncpg needed.
    hello = subprocess.run([sys.executable, str(ROOT / "examples" / "hello_world.py")], cwd=tmp_path,
                           env=no_asyncpg, capture_output=True, text=True, timeout=60)
    assert hello.returncode == 0, hello.stderr
    assert "Hello" in hello.stdout


def _assert_names_the_extra(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc.stdout
    assert EXTRA_HINT in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_postgres_provider_names_the_extra(no_asyncpg: dict[str, str], tmp_path: Path) -> None:
    proc = _python(f"""
        import asyncio
        from duroxide_runtime import ConfigurationError, PostgresProvider

        try:
            asyncio.run(PostgresProvider.new({PG_URL!r}))
        except ConfigurationError as err:
            print("ConfigurationError:", err.message)
            raise SystemExit(f"fix: {{err.fix}}")
    """, no_asyncpg, tmp_path)
    _assert_names_the_extra(proc)
    assert "ConfigurationError: PostgreSQL stores need the asyncpg package" in proc.stdout, proc.stdout


def test_duroxide_main_postgres_names_the_extra(no_asyncpg: dict[str, str], tmp_path: Path) -> None:
    program = tmp_path / "app.py"
    program.write_text(dedent_src(f"""
        from duroxide_macros.prelude import *


        @duroxide_main(provider="postgres", database_url={PG_URL!r})
        async def main() -> None:
            print("never reached")


        main()
    """))
    proc = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=no_asyncpg, capture_output=True,
                          text=True, timeout=60)
    _assert_names_the_extra(proc)
    assert "never reached" not in proc.stdout
    assert re.search(r"ConfigurationError: PostgreSQL stores need the asyncpg package", proc.stderr), proc.stderr


def test_cli_on_postgres_names_the_extra(no_asyncpg: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "duroxide"), "--store", PG_URL, "list"], cwd=tmp_path,
                          env=no_asyncpg, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc
    assert "error: PostgreSQL stores need the asyncpg package" in proc.stderr and EXTRA_HINT in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_importing_the_runtime_loads_no_optional_package(tmp_path: Path) -> None:
    # Every worker process and each `duroxide` command pays for what `import duroxide_runtime` loads: the
    # extras' packages (the redis client alone takes ~70 ms) load only when their feature is used.
    probe = _python("""
        import sys
        import duroxide_runtime
        from duroxide_runtime import Client, Runtime, SqliteProvider
        optional = ("redis", "asyncpg", "pydantic", "prometheus_client", "opentelemetry", "aiohttp", "jinja2")
        print(sorted(name for name in optional if name in sys.modules))
        from duroxide_runtime import RedisProvider, PostgresProvider
        print(RedisProvider.__name__, PostgresProvider.__name__, "redis" in sys.modules, "asyncpg" in sys.modules)
    """, clean_env(), tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["[]", "RedisProvider PostgresProvider True True"]
