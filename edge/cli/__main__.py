"""``python -m edge.cli``: the provisioning script runs the CLI this way before the console script exists."""

import sys

from edge.cli.main import main

sys.exit(main())
