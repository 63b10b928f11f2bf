"""``python -m lcm_lora.training --config FILE ...``: the trainer without the full CLI (subprocesses, torchrun)."""
import sys

from .cli import main

sys.exit(main())
