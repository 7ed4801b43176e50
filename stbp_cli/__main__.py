"""`python -m stbp_cli ...` runs the `stbp` command."""
import sys

from stbp_cli.main import main

sys.exit(main())
