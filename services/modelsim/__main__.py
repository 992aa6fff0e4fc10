"""`python -m llmflow.services.modelsim`: the same as the `llmflow-modelsim` command."""

import sys

from llmflow.services.modelsim.cli import main

sys.exit(main())
