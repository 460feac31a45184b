"""PLACEHOLDER: being implemented."""

def dual(*a, **k):
    raise NotImplementedError


def dyn_unc(*a, **k):
    raise NotImplementedError


def el2n(*a, **k):
    raise NotImplementedError


def forgetting(*a, **k):
    raise NotImplementedError


def aum(*a, **k):
    raise NotImplementedError


def entropy(*a, **k):
    raise NotImplementedError


def margin(*a, **k):
    raise NotImplementedError


def tdds(*a, **k):
    raise NotImplementedError


