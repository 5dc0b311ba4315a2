"""Fixtures for the callback tests."""
import pytest

from callback_helpers import fake_model


@pytest.fixture
def model():
    """A stand-in exburn_tf Model around a tiny Keras model (2 -> 1 Dense)."""
    return fake_model()
