"""Research code that is not part of the package: the comparison of head modes (``python -m experiments.comparison``)."""
