"""The deterministic engine core: one orchestration turn, with no I/O.

A turn is ``history + new messages + now -> TurnResult``
(:func:`duroxide_runtime.engine.execution.execute`, or
``Execution.run_turn`` for an execution kept live between turns). Its parts,
one job each:

* :mod:`.commands` - the typed commands orchestration code issues, and the
  small interface (:class:`~.commands.CommandSink`) the context issues them to;
* :mod:`.matcher` - matches each command with the next recorded schedule
  event on replay (``NonDeterminismError`` on a mismatch);
* :mod:`.buffer` - the command buffer: turns each command into a durable
  future, recorded or replayed, and resolves it when its completion arrives;
* :mod:`.inbox` - new queue messages into history events (one ``_apply_*``
  per kind), and the external events waiting for a wait;
* :mod:`.output` - what the turn produced, to be committed atomically;
* :mod:`.execution` - the turn function that drives them on the loop.

This package's ``__init__`` imports nothing: ``context.py`` imports
``engine.commands`` while ``engine.execution`` imports ``context.py``.
"""
