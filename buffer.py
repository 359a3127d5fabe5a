"""Thin entry point kept for users of the reference scripts: `python buffer.py CONFIG [key=value ...]`."""
import sys

from vldistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["buffer", *sys.argv[1:]]))
