"""PLACEHOLDER: being implemented."""

def norm_sampling(*a, **k):
    raise NotImplementedError


