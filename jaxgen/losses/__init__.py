"""Losses as pure functions of arrays, one file per family; each owns its LOSSES registry."""
