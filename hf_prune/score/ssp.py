"""PLACEHOLDER: being implemented."""

def ssp(*a, **k):
    raise NotImplementedError


