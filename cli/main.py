"""`lcm-lora` command line (placeholder until the CLI lands)."""
import sys


def main(argv=None) -> int:
    print("lcm-lora: no commands yet", file=sys.stderr)
    return 2
