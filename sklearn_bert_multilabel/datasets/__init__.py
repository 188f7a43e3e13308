"""Data sets shipped with the package."""

from ._goemotions import load_goemotions

__all__ = ["load_goemotions"]
