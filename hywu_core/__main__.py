"""`python -m hywu_core COMMAND`: see hywu_core.cli."""
import sys

from .cli import main

sys.exit(main())
