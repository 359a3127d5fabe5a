"""Thin entry point kept for users of the reference scripts: `python eval_retrieval.py CONFIG [key=value ...]`."""
import sys

from vldistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
