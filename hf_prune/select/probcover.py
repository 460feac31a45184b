"""PLACEHOLDER: being implemented."""

def probcover(*a, **k):
    raise NotImplementedError


