"""Evaluation: completion generators (vLLM, transformers) with a content cache, scorers, metrics.

Nothing here imports `trainers/`. Generators are registered classes in `harness.registries.GENERATORS`;
heavy engines (vLLM) are imported only inside the class that uses them.
"""
