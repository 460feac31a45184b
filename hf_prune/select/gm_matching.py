"""PLACEHOLDER: being implemented."""

def gm_matching(*a, **k):
    raise NotImplementedError


def herding(*a, **k):
    raise NotImplementedError


