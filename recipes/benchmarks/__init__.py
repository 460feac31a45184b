"""Quality and speed benchmarks; each runs as ``python -m recipes.benchmarks.<name>`` (``--help`` for options).

Example:
    >>> from recipes.benchmarks.references import herding
"""
