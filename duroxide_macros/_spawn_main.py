"""What multiprocessing's spawn and forkserver children run as ``__mp_main__``: the rewritten main script.

A main script rewritten by ``import duroxide_macros.install`` names this module
as ``__main__.__spec__``; a child then runs it with ``runpy.run_module``, and
it runs the script's rewritten code in its own namespace (see
:mod:`duroxide_macros.mainscript`). Imported any other way, it does nothing.
"""

if __name__ == "__mp_main__":
    from duroxide_macros.mainscript import run_in_child

    run_in_child(globals())
