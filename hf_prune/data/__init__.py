"""Offline and Hub dataset loaders returning DatasetDicts with train/test splits."""
