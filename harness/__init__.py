"""bdpo-harness: train, generate, score and report DPO against Balanced-DPO.

`harness/` is both the floor (config types, registries, record I/O, run directory, data sets)
and the roof (CLI and pipeline). Floor modules import nothing from trainers/, evaluators/ or
reports/; only `harness.cli`, `harness.commands.*` and `harness.pipeline` do.
"""

__version__ = "0.1.0"
