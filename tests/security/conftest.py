"""Escape attempts share the sandbox tests' manager fixture (one zygote per module)."""

from __future__ import annotations

from tests.sandbox.conftest import manager

__all__ = ["manager"]
