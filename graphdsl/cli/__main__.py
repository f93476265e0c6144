"""`python -m graphdsl.cli`: the `graphdsl` command."""
import sys

from . import main

sys.exit(main())
