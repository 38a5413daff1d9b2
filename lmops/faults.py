"""Named fault points for the fault-injection tests: ``LMOPS_FAULT=<point>`` kills the process with SIGKILL
when it reaches that point (no cleanup, no ``finally``: what a power cut or the OOM killer does).

Points sit at every stage boundary (``stage.<name>.done``) and between the writes that must not split:
the ``data/`` swap, ``dvc add`` and the push (``version.*``), the champion alias and its history record
(``registry.*``). Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    wanted = os.environ.get("LMOPS_FAULT")
    if wanted and wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
