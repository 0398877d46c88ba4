"""The benchmark: tfi against the seed notebook's approach on the same data and budget.

Uses the stages like a user would; must not import ``cli``.
"""
