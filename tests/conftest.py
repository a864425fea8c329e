"""Shared fixtures: the tiny random-weight SD model of the parity data (a real diffusers folder), loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"
TINY_MODEL = PARITY / "model"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_prior():
    """Prior over the tiny random SD model (8x8 latents at 64x64 input), CPU fp32."""
    from idsedit.prior import load_prior

    return load_prior(str(TINY_MODEL), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def parity():
    """The official implementation's reference tensors (see fixtures/parity/README.md)."""
    from safetensors.torch import load_file

    return load_file(str(PARITY / "official_case_a.safetensors"))
