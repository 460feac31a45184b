"""PLACEHOLDER: being implemented."""

def feature_norm(*a, **k):
    raise NotImplementedError


