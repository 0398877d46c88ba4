"""The pipeline's stages: prepare, select, tune, train, score, each ``run(ctx, ...) -> Output``.

Glue between the pure core, the search and the tracking layer; no maths here. Must not import
``pipeline``, ``cli`` or ``bench``.
"""
