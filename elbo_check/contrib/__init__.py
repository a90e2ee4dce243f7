"""Adapters between elbo_check and machine-learning frameworks (optional dependencies).

Each submodule imports its framework only when it is itself imported:
``import elbo_check`` and ``import elbo_check.testing`` never import one.
"""
