"""Sampling functions, one file per family: pure functions of (model, params, arrays)."""
