"""`workers` > 1: the same loop (loop.fit) data-parallel under Ray Train's TorchTrainer, on the Ray this process
is already connected to (the command line connects or starts one; a deployment is inside one).

Each worker loads the base, takes its own photo of each step and its own noise, and DDP averages the LoRA
gradients (gloo on CPUs, NCCL with one GPU per worker). Worker 0 reports each step's loss (averaged over the
workers) and asks whether to stop through a small actor this process owns, which also carries the trained LoRA
layers back: the adapter is written here, by the caller's train(), so the workers' nodes need no shared folder
for it. Their checkpoints go into the LoRA folder's `.training/` as they see it: resuming a run across nodes
needs that folder shared (as serving it on several nodes does).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

import torch

from ..weights.layout import WeightPaths
from .loop import Crop, Fitted, TrainingCancelled, World, fit
from .options import TrainingOptions
from .output import Workspace

POLL_S = 0.5  # how often progress is read and a stop request passed on


class TrainingFailed(RuntimeError):
    """A Ray Train worker failed; the message is its error."""


def fit_on_ray(weights: WeightPaths, crops: list[Crop], options: TrainingOptions, total_steps: int,
               workspace: Workspace, *, on_step: Callable[[int, int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None, use_gpu: bool | None = None) -> Fitted:
    """loop.fit on options.workers Ray Train workers; `use_gpu` (default: this machine has one) gives each a GPU."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        raise RuntimeError("fit_on_ray needs a connected Ray (ray.init)")
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    control = ray.remote(num_cpus=0)(Control).remote()
    config = {"weights": weights, "crops": crops, "options": options, "total_steps": total_steps,
              "workspace": workspace, "control": control}
    with tempfile.TemporaryDirectory(prefix="sdxl-train-") as storage:  # Ray Train's run state; no checkpoints
        trainer = TorchTrainer(
            worker_loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=use_gpu,
                                         resources_per_worker={"GPU": 1} if use_gpu else {"CPU": 1},
                                         trainer_resources={"CPU": 0}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=f"lora-{options.name}", storage_path=storage,
                                 failure_config=FailureConfig(max_failures=0), verbose=0),
        )
        def report() -> None:
            for event in ray.get(control.drain.remote()):
                if on_step:
                    on_step(*event)

        with ThreadPoolExecutor(1, thread_name_prefix="ray-train") as pool:
            running = pool.submit(trainer.fit)
            try:
                while not wait([running], timeout=POLL_S).done:
                    report()
                    if should_stop and should_stop():
                        control.stop.remote()
                report()
            except BaseException:  # Ctrl-C, or on_step failed: the workers stop at their next step, then this raises
                control.stop.remote()
                wait([running])
                raise
            try:
                running.result()
            except Exception as error:  # TrainingFailedError: the worker's own error is its cause
                cause = error.__cause__ or error
                raise TrainingFailed(f"a Ray Train worker failed: {type(cause).__name__}: {cause}") from error
    fitted = ray.get(control.result.remote())
    ray.kill(control)
    if fitted is None:
        raise TrainingCancelled(f"cancelled on {options.workers} workers")
    return fitted


class Control:
    """The actor between this process and worker 0: steps reported, a stop asked for, the result handed back."""

    def __init__(self):
        self.events: list[tuple[int, int, float]] = []
        self.stopping = False
        self.fitted: Fitted | None = None

    def report(self, step: int, total: int, loss: float) -> None:
        self.events.append((step, total, loss))

    def drain(self) -> list[tuple[int, int, float]]:
        events, self.events = self.events, []
        return events

    def stop(self) -> None:
        self.stopping = True

    def stopped(self) -> bool:
        return self.stopping

    def deliver(self, fitted: Fitted) -> None:
        self.fitted = fitted

    def result(self) -> Fitted | None:
        return self.fitted


def worker_loop(config: dict) -> None:
    """One Ray Train worker: loop.fit with this worker's rank, DDP models and averaged losses."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    control = config["control"]

    def mean(value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.item() / size

    world = World(rank, size, device=str(device), mean=mean,
                  wrap=lambda model: ray.train.torch.prepare_model(model, move_to_device=False))
    try:
        fitted = fit(config["weights"], config["crops"], config["options"], config["total_steps"],
                     checkpoints=config["workspace"], world=world,
                     on_step=lambda *event: control.report.remote(*event),
                     should_stop=lambda: rank == 0 and ray.get(control.stopped.remote()))
    except TrainingCancelled:
        return
    if rank == 0:
        ray.get(control.deliver.remote(fitted))
