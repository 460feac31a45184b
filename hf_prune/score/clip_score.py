"""PLACEHOLDER: being implemented."""

def clip_score(*a, **k):
    raise NotImplementedError


