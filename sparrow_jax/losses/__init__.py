"""Losses: pure functions returning (scalar loss, metrics dict)."""
