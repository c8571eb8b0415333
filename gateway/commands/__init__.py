"""Operator commands of the ``strata`` CLI, one module each (db, gc, fsck, keys, stats).

Each module exposes ``register(subparsers, common)``, which adds its parser and sets
``run=<function(args, config) -> int>`` as the parser default; ``gateway.cli`` lists the
modules in ``COMMAND_MODULES``.
"""
