"""Benchmarks of ``avatar_im`` against hand-written baselines on the same reference server.

Run ``python -m benchmarks.run`` from the repository root (``--quick`` for tiny
counts); see ``docs/performance.md``.  Nothing here is part of the library.
"""
