"""One job of a parallel run: exactly one named stage of the plan, through the same Pipeline code as
a sequential `bdpo run` (Pipeline.run_job).

    python -m harness.worker STAGE FINGERPRINT --config RUN_DIR/config.yaml --cwd DIR [--threads N] [--verbose]

harness/executors.py starts it, as a subprocess per stage (`--jobs N`) or as a Ray task calling
`run_job` (`--executor ray`). The config is the run directory's resolved `config.yaml`, which the
coordinating `bdpo run` wrote before the first job; `--cwd` is the coordinator's working directory, so
relative paths in the config mean what they meant there.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class StageJob:
    """What a job needs to plan the run again and run one of its stages."""

    stage: str
    fingerprint: str  # the stage's fingerprint as the coordinator planned it
    config: str  # the run directory's config.yaml, absolute
    cwd: str  # the coordinator's working directory
    threads: int | None = None  # torch threads of the job (None: torch's default)
    verbose: bool = False  # the libraries' own logs too (`bdpo --verbose`)

    @property
    def kind(self) -> str:
        """The stage kind (`train` of `train/dpo-seed0`): the key of harness.provenance.STAGE_CODE and
        of the config's `resources`."""
        return self.stage.split("/")[0]

    def argv(self) -> list[str]:
        """The command that runs this job in a new process."""
        threads = ["--threads", str(self.threads)] if self.threads else []
        return [sys.executable, "-m", "harness.worker", self.stage, self.fingerprint, "--config", self.config,
                "--cwd", self.cwd, *threads, *(["--verbose"] if self.verbose else [])]


def run_job(job: StageJob) -> str:
    """Run the job's stage in this process: 'ran', or 'cached' when another job finished it first."""
    from harness.terminal import quiet_third_party

    quiet_third_party(job.verbose)  # before the libraries are imported

    import torch
    from rich.console import Console

    from harness.config import load_config
    from harness.pipeline import Pipeline

    os.chdir(job.cwd)
    if job.threads:
        torch.set_num_threads(job.threads)
    # Several jobs share one terminal: no progress bars, one line per message.
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    return Pipeline(load_config(job.config), console=console, progress=False).run_job(job.stage, job.fingerprint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("fingerprint")
    parser.add_argument("--config", required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        run_job(StageJob(args.stage, args.fingerprint, args.config, args.cwd, args.threads, args.verbose))
    except UserError as e:
        print(f"error: stage {args.stage}: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
