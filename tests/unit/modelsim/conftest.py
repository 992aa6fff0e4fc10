"""Shared fixtures for the model simulator tests."""

import base64
import io

import pytest
from PIL import Image


def png_data_url(width: int, height: int, colour: tuple[int, int, int]) -> str:
    """A base64 PNG data URL of a plain-colour RGB image."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def red_png_url() -> str:
    return png_data_url(40, 30, (255, 0, 0))
