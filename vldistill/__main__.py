"""`python -m vldistill ...` is the same as the `vldistill` command."""
import sys

from .cli import main

sys.exit(main())
