"""Reading what ``captum-iba attribute`` wrote (the store lives in :mod:`captum_iba.app.store`)."""

from .app.store import read_index, read_maps

__all__ = ["read_maps", "read_index"]
