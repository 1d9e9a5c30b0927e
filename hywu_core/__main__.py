"""`python -m hywu_core COMMAND`: see hywu_core.tools.cli."""
import sys

from hywu_core.tools.cli import main

sys.exit(main())
