"""PLACEHOLDER: being implemented."""

def typiclust(*a, **k):
    raise NotImplementedError


