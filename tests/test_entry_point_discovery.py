"""Discovery reaches decorated functions of other installed packages through the ``duroxide`` entry points."""

from __future__ import annotations

import sys
from pathlib import Path

from .support import dedent_src, run_cmd


def _install_fake_distribution(site: Path) -> None:
    """A real distribution on sys.path: dist-info metadata with an entry point, and its module."""
    (site / "plugmod.py").write_text(dedent_src('''
        from duroxide_macros.prelude import *

        @activity(typed=True)
        async def plug_double(x: int) -> int:
            return 2 * x

        @orchestration
        async def plug_flow(ctx: OrchestrationContext, x: int) -> int:
            return await durable(plug_double(x)) + 1
    '''))
    info = site / "plugpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[duroxide]\nplug = plugmod\n")


def test_functions_of_an_installed_package_are_discovered_without_importing_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site)
    app = tmp_path / "app.py"
    app.write_text(dedent_src('''
        import duroxide_macros.install
        import asyncio, sys
        from duroxide_macros.prelude import *

        async def main() -> None:
            assert "plugmod" not in sys.modules
            store = InMemoryProvider()
            rt = await Runtime.builder().store(store).discover_activities().discover_orchestrations().start()
            client = Client(store)
            await client.start_orchestration("p1", "plug_flow", "20")
            print("STATUS", await client.wait_for_orchestration("p1", 10))
            print("LOADED", "plugmod" in sys.modules)
            await rt.shutdown()

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, str(app)], tmp_path, PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    assert "STATUS Completed(output='41', custom_status=None)" in proc.stdout
    assert "LOADED True" in proc.stdout


def test_a_broken_entry_point_is_a_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    info = site / "badpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[duroxide]\nbad = no_such_module_here\n")
    app = tmp_path / "app.py"
    app.write_text(dedent_src('''
        import asyncio
        from duroxide_macros.prelude import *

        async def main() -> None:
            await Runtime.builder().store(InMemoryProvider()).discover_activities().start()

        asyncio.run(main())
    '''))
    proc = run_cmd([sys.executable, str(app)], tmp_path, PYTHONPATH=str(site))
    assert proc.returncode != 0
    assert "entry point 'bad' (no_such_module_here) of group 'duroxide' failed to import" in proc.stderr
    assert "Fix: fix or uninstall the package that declares it" in proc.stderr
