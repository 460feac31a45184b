"""PLACEHOLDER: being implemented."""

def gram_schmidt(*a, **k):
    raise NotImplementedError


