"""Orchestration: one idempotent, level-based reconcile per kind. Uses kube for I/O, builders for shape."""
