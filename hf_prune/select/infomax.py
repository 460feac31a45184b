"""PLACEHOLDER: being implemented."""

def infomax(*a, **k):
    raise NotImplementedError


