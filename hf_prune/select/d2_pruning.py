"""PLACEHOLDER: being implemented."""

def d2_pruning(*a, **k):
    raise NotImplementedError


