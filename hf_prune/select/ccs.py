"""PLACEHOLDER: being implemented."""

def ccs(*a, **k):
    raise NotImplementedError


