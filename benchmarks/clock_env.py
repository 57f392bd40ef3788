"""Set up the CPU-time clock's environment before torch loads (import this module first).

With `--clock cpu` (or `--clock=cpu`) on the command line, OpenMP threads are told to sleep
instead of spinning at barriers (`OMP_WAIT_POLICY=PASSIVE`), so process CPU time counts work,
not waiting (see `harness.CLOCK`). It must run before torch loads its OpenMP runtime, which is
why it is its own module without a torch import.
"""

import os
import sys

_ARGS = sys.argv[1:]
if "--clock=cpu" in _ARGS or any(
    a == "--clock" and b == "cpu" for a, b in zip(_ARGS, _ARGS[1:], strict=False)
):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
