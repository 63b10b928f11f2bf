"""``python -m lcm_lora.training --config FILE ...``: the trainer without the full CLI (subprocesses, torchrun)."""
import sys

from ..lcm_core.cpu_threads import configure_before_torch
from ..lcm_core.quiet_libraries import quiet_libraries

configure_before_torch()  # before torch is imported (the OpenMP runtime reads it at load)
quiet_libraries("--debug" in sys.argv)

from .cli import main  # noqa: E402

sys.exit(main())
