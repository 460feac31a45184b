"""PLACEHOLDER: being implemented."""

def top_k(*a, **k):
    raise NotImplementedError


def threshold(*a, **k):
    raise NotImplementedError


