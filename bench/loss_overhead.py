"""Loss overhead: step time of bDPO and nbDPO against DPO, same model, data, batch and settings.

    python -m bench.loss_overhead [--rounds 2] [--steps 8] [--threads 1]

All losses train with `trainers.trainer.train_policy` in one fresh process, interleaved round by
round (dpo, bdpo, nbdpo, dpo, bdpo, ...) so that a change in machine load hits every loss alike;
the reference log-probs are cached once and shared. Reported: median step time per loss after
the warm-up steps (wall and CPU time; CPU time of the one-thread process is the stable measure
on a shared machine), its ratio to DPO (target <= 1.03), and the loss function alone (forward +
backward on the batch's [B] log-probs), which bounds what the loss itself can add to a step.
"""

from __future__ import annotations

import tempfile
from typing import Any

from bench.common import Stopwatch, median, report, run_isolated, train_project, model_from_args, training_parser

LOSSES = {"dpo": {}, "bdpo": {"clip": 0.3}, "nbdpo": {"clip": 0.5}}


def loss_fn_seconds(loss: str, params: dict[str, Any], batch: int, repeats: int = 200) -> float:
    """Median seconds of one forward + backward of the registered loss alone on [batch] log-probs."""
    import torch

    from harness.registries import LOSSES as REGISTRY
    from trainers.losses import PairLogps

    fn = REGISTRY.get(loss)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        chosen = (-50 * torch.rand(batch, generator=gen)).requires_grad_()
        rejected = (-50 * torch.rand(batch, generator=gen)).requires_grad_()
        logps = PairLogps(chosen, rejected, chosen.detach() + 1, rejected.detach() - 1,
                          torch.full((batch,), 30.0), torch.full((batch,), 30.0))
        with Stopwatch() as sw:
            fn(logps, **params).losses.mean().backward()
        times.append(sw.seconds)
    return median(times)


def measure(model: str, rounds: int, steps: int, warmup: int, batch: int, max_length: int) -> dict[str, Any]:
    """Worker (fresh process): every loss trained `rounds` times, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    cpu_times: dict[str, list[float]] = {name: [] for name in LOSSES}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(rounds):
            for name, params in LOSSES.items():
                run = train_project(model, loss=name, params=params, steps=steps, batch=batch,
                                    max_length=max_length, max_prompt_length=max_length // 2, cache=cache)
                times[name].extend(run["step_times"][warmup:])
                cpu_times[name].extend(run["step_cpu_times"][warmup:])
    return {"step_times": times, "step_cpu_times": cpu_times,
            "loss_fn_s": {name: loss_fn_seconds(name, params, batch) for name, params in LOSSES.items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = training_parser(__doc__.splitlines()[0], hidden=256, layers=4, steps=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    model = model_from_args(args)
    raw = run_isolated("bench.loss_overhead:measure", threads=args.threads, model=model, rounds=args.rounds,
                       steps=args.steps, warmup=args.warmup, batch=args.batch, max_length=args.max_length)
    step = {name: median(t) for name, t in raw["step_times"].items()}
    cpu = {name: median(t) for name, t in raw["step_cpu_times"].items()}
    results = {"model": model, "batch_pairs": args.batch, "max_length": args.max_length, "threads": args.threads,
               "steps_timed_per_loss": {k: len(v) for k, v in raw["step_times"].items()},
               "median_step_s": step, "median_step_cpu_s": cpu, "loss_fn_only_s": raw["loss_fn_s"],
               "loss_fn_share_of_dpo_step": {k: v / step["dpo"] for k, v in raw["loss_fn_s"].items()}}
    ratios = [(f"{name}_step_{kind}/dpo", t[name] / t["dpo"], "<= 1.03", t[name] / t["dpo"] <= 1.03)
              for kind, t in (("wall", step), ("cpu", cpu)) for name in LOSSES if name != "dpo"]
    ratios += [(f"{name}_loss_fn_extra/dpo_step", (raw["loss_fn_s"][name] - raw["loss_fn_s"]["dpo"]) / step["dpo"],
                "<= 0.03", (raw["loss_fn_s"][name] - raw["loss_fn_s"]["dpo"]) / step["dpo"] <= 0.03)
               for name in LOSSES if name != "dpo"]
    report("Loss overhead: bDPO and nbDPO step time against DPO", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
