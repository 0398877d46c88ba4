"""The MLflow boundary: runs, datasets, trial runs, the model registry, the serving model.

The only package that imports MLflow. Imports ``tfi.core``; must not import ``tfi.search``
internals, ``stages``, ``bench``, ``pipeline`` or ``cli``.
"""
