"""faceveil: de-identify face datasets at cluster scale, with escrowed reversibility.

The project's folders install under this one name: ``faceveil.anon_core`` (the per-image
library), ``faceveil.manifests`` (keys, escrow, audit log), ``faceveil.jobs`` (the Ray job and
the ``faceveil`` command) and ``faceveil.cluster``; nothing installs as a top-level ``jobs`` or
``anon_core``. In a source checkout, where those folders sit beside this one, they are found
there too, so the tree runs without being installed.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
if not (_HERE / "jobs").is_dir() and (_HERE.parent / "jobs" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # a source checkout: the folders sit beside this one
