"""The package loads nothing by itself, so `models.tokens` alone stays light."""

from __future__ import annotations

import subprocess
import sys


def test_token_counting_does_not_load_the_openai_sdk() -> None:
    code = "import sys, llmflow.services.models.tokens; print('openai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
