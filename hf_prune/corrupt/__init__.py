"""Corruptions that mark affected rows in a boolean column."""
