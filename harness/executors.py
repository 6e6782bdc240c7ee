"""Running a plan's stale stages as separate jobs, several at once: `bdpo run --jobs N` on this
machine, `bdpo run --executor ray` on a Ray cluster (docs/scale-out.md).

The coordinating `bdpo run` holds the run directory's RunLock (no other `bdpo` process writes the run)
and submits each stage as soon as every stage it reads from (pipeline.stage_reads) is fresh. A job runs
exactly that stage through harness/worker.py, the same Pipeline code as a sequential run, under the
stage's own lock (RunDir.stage_lock), so two jobs never write one stage. The run directory stays the
only shared state: jobs read their inputs from it and record their stage there, and the coordinator
counts a stage done only when its record is fresh. One registered class per executor
(harness.registries.EXECUTORS); `bdpo run` without --jobs and --executor runs no executor at all.
"""

from __future__ import annotations

import os
import queue
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from harness.config import RunConfig, StageResources
from harness.errors import UserError
from harness.registries import EXECUTORS
from harness.worker import StageJob, run_job

if TYPE_CHECKING:
    from rich.console import Console

    from harness.pipeline import Stage
    from harness.rundir import RunDir


class Executor:
    """Runs stages as jobs. Subclasses say how many at once (`slots`) and how one job starts (`submit`);
    the scheduling (`run_stages`) is shared."""

    # Jobs at once; None: every ready stage is submitted and the cluster queues what does not fit.
    slots: int | None = None

    def __init__(self, cfg: RunConfig, jobs: int | None, address: str | None, verbose: bool) -> None:
        self.cfg = cfg
        self.verbose = verbose

    def submit(self, job: StageJob) -> Future[str | None]:
        """Start `job`. The future's result is None when the stage was done, else one line saying why not;
        an exception means the job was lost (its process or machine died)."""
        raise NotImplementedError

    def close(self) -> None:
        """Wait for what is still running and let go of the machines."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_stages(self, todo: list[Stage], reads: dict[str, list[str]], run: RunDir,
                   console: Console) -> list[tuple[str, str]]:
        """Run `todo` (the stale stages, in plan order), each once the stages it reads from are done;
        returns (stage, 'ran') in the order they finished. After a failure no new stage starts; the
        running ones finish (their work is kept) and a UserError names every failed stage."""
        waiting = {s.name: s for s in todo}
        needs = {s.name: set(reads[s.name]) & waiting.keys() for s in todo}
        running: dict[Future[str | None], tuple[Stage, float]] = {}
        done: list[tuple[str, str]] = []
        failed: list[str] = []
        while waiting or running:
            ready = [] if failed else [s for name, s in waiting.items() if not needs[name]]
            free = len(ready) if self.slots is None else self.slots - len(running)
            for stage in ready[:free]:
                del waiting[stage.name]
                job = StageJob(stage.name, stage.fingerprint, str(run.path("config.yaml")), os.getcwd(),
                               verbose=self.verbose)
                running[self.submit(job)] = (stage, time.monotonic())
                console.print(f"[bold]started[/] {stage.name} ({len(running)} running, {len(waiting)} waiting)")
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage, start = running.pop(future)
                error = future.exception()
                # A Ray task's error wraps the exception raised inside it (its `cause`).
                error = getattr(error, "cause", None) or error
                why = f"its job failed ({type(error).__name__}: {first_line(error)})" if error else future.result()
                if why is None and not run.is_fresh(stage.name, stage.fingerprint):
                    why = "its job ended without recording the stage"
                if why is None:
                    for names in needs.values():
                        names.discard(stage.name)
                    done.append((stage.name, "ran"))
                    console.print(f"[green]done[/] {stage.name} in {time.monotonic() - start:.1f} s")
                else:
                    failed.append(f"stage {stage.name}: {why}")
                    console.print(f"[red]failed[/] {stage.name}: {why}" + (
                        f"; waiting for the {len(running)} running stage(s)" if running else ""), markup=True)
        if failed:
            raise UserError(f"{'; '.join(failed)}. Finished stages are kept: rerun the same command to continue.")
        return done


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def refused(address: str, timeout: float = 10.0) -> str | None:
    """Why nothing answers at a Ray head's `host:port` (or `ray://host:port`), or None when something
    does or the address names no port ('auto', 'local'). Ray itself retries an unreachable address for
    minutes before it gives up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, by the ids CUDA_VISIBLE_DEVICES gives them (when set)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)]


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask: taskset, a Slurm allocation)."""
    return len(os.sched_getaffinity(0))


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """`--jobs N` stages at once on this machine, each a subprocess with its own devices: with GPUs
    CUDA_VISIBLE_DEVICES = its share of them (GPUs // N each), and cores // N threads each."""

    def __init__(self, cfg: RunConfig, jobs: int | None, address: str | None, verbose: bool) -> None:
        super().__init__(cfg, jobs, address, verbose)
        if address is not None:
            raise UserError("--ray-address: only used with --executor ray.")
        self.slots = jobs or 1
        gpus, cores = visible_gpus(), cpu_count()
        devices, named = (len(gpus), f"{len(gpus)} GPU(s) ({','.join(gpus)})") if gpus else (cores, f"{cores} CPU core(s)")
        if self.slots > devices:
            raise UserError(f"--jobs {self.slots}: this machine has {named}, one job per device at most; "
                            f"give --jobs {devices} or fewer.")
        per_job = len(gpus) // self.slots
        tensor_parallel = cfg.generate.tensor_parallel_size
        if gpus and tensor_parallel > per_job:
            raise UserError(f"--jobs {self.slots}: each job gets {per_job} of the {len(gpus)} GPUs, but "
                            f"generate.tensor_parallel_size is {tensor_parallel}; give --jobs "
                            f"{len(gpus) // tensor_parallel} or fewer.")
        # The user's own OMP_NUM_THREADS, when set, caps each job's share of the cores.
        cap = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else cores
        self.threads = max(1, min(cap, cores // self.slots))
        # One environment per job slot: a job takes a free slot's devices and gives them back when it ends.
        self.free: queue.Queue[dict[str, str]] = queue.Queue()
        for i in range(self.slots):
            env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * per_job:(i + 1) * per_job])
            self.free.put(env)
        self.pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="bdpo-job")

    def submit(self, job: StageJob) -> Future[str | None]:
        return self.pool.submit(self._run, replace(job, threads=self.threads))

    def _run(self, job: StageJob) -> str | None:
        env = self.free.get()
        try:
            code = subprocess.run(job.argv(), env={**os.environ, **env}, cwd=job.cwd).returncode
        finally:
            self.free.put(env)
        if code < 0:
            return f"its job was killed by signal {-code}"
        return f"its job exited with code {code} (its error is above)" if code else None

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _ray_job(job: StageJob) -> str | None:
    """A Ray task: the job's stage in this worker process; a UserError comes back as its message."""
    try:
        run_job(job)
    except UserError as e:
        return str(e)
    return None


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Stages as Ray tasks on a running cluster (`ray start`), each asking for its kind's `resources`
    from the config; Ray places and queues them, and reruns a task whose worker died. Every node must
    see the run directory, data and models at the same paths (a shared filesystem)."""

    def __init__(self, cfg: RunConfig, jobs: int | None, address: str | None, verbose: bool) -> None:
        super().__init__(cfg, jobs, address, verbose)
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray: the ray package is not installed; pip install 'bdpo-harness[ray]' "
                            "on this machine and every node.") from None
        address = address or "auto"
        unreachable = refused(address)
        if unreachable:
            raise UserError(f"--executor ray: no Ray cluster reachable at {address!r} ({unreachable}). Start one "
                            "with `ray start --head` (docs/scale-out.md), or give its address with --ray-address.")
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"--executor ray: no Ray cluster reachable at {address!r} ({first_line(e)}). Start one with "
                            "`ray start --head` (docs/scale-out.md), or give its address with --ray-address.") from None
        self.ray = ray
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self._check_fits(nodes, address)
        total = int(sum(n.get("CPU", 0) for n in nodes))
        if jobs is not None and jobs > total:
            ray.shutdown()
            raise UserError(f"--jobs {jobs}: the Ray cluster at {address!r} has {total} CPU(s); give --jobs {total} "
                            "or fewer, or leave it out (Ray queues what does not fit).")
        self.slots = jobs
        # A fresh worker process per stage (max_calls=1): its own torch threads and devices, its memory freed.
        self.task = ray.remote(max_calls=1)(_ray_job)

    def _check_fits(self, nodes: list[dict[str, Any]], address: str) -> None:
        """Refuse a stage kind whose resources no node has: Ray would wait for such a node forever."""
        for kind in type(self.cfg.resources).__dataclass_fields__:
            need: StageResources = getattr(self.cfg.resources, kind)
            if not any(n.get("CPU", 0) >= need.cpus and n.get("GPU", 0) >= need.gpus for n in nodes):
                self.ray.shutdown()
                have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes) or "none"
                raise UserError(f"resources.{kind}: {need.cpus:g} CPU and {need.gpus:g} GPU fit on no node of the "
                                f"Ray cluster at {address!r} (its nodes: {have}); lower them or add a node.")

    def submit(self, job: StageJob) -> Future[str | None]:
        need: StageResources = getattr(self.cfg.resources, job.kind)
        task = self.task.options(num_cpus=need.cpus, num_gpus=need.gpus, name=job.stage)
        return task.remote(replace(job, threads=max(1, int(need.cpus)))).future()

    def close(self) -> None:
        self.ray.shutdown()
