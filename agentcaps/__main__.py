"""`python -m agentcaps`: the same command as the `agentcaps` console script."""

import sys

from agentcaps.cli import main

sys.exit(main())
