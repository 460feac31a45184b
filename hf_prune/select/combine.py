"""PLACEHOLDER: being implemented."""

def combine(*a, **k):
    raise NotImplementedError


