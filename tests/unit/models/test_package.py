"""The package exports its public names lazily, so `models.tokens` alone stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmflow.services import models


def test_every_exported_name_resolves() -> None:
    assert sorted(models.__all__) == sorted(models._HOMES)
    for name in models.__all__:
        assert getattr(models, name).__name__ == name
    with pytest.raises(AttributeError):
        _ = models.nope


def test_token_counting_does_not_load_the_openai_sdk() -> None:
    code = "import sys, llmflow.services.models.tokens; print('openai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
