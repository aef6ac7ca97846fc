"""Ray entry points and the ``faceveil`` command line: shard, run, restore, eval, demo, bench."""

__version__ = "0.1.0"
