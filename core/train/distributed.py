"""Training on several processes, GPUs or machines through accelerate's launcher.

A run whose recipe asks for more than one process is started as a
*supervisor* (``python -m finetty.core.train.distributed RUN_DIR --lock-fd N``).
The supervisor holds the run's lock for the whole run and calls accelerate's
launcher in-process (``accelerate launch --multi_gpu|--use_fsdp|--use_deepspeed
-m finetty.core.train.worker RUN_DIR``), which starts one worker per rank through
``torch.distributed.run``. Global rank 0 writes the events and the
checkpoints; every rank's output goes to ``worker.log`` with a ``[rank N]``
prefix. Stop and checkpoint requests are signals to rank 0, which shares
them with every rank at the next step boundary, so all ranks stop together.
When a rank dies the launcher ends the others, and the supervisor, the only
process left, writes one ``run_failed`` naming the rank.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from finetty.core.recipe.sections import LAUNCH_OPTIONS, is_distributed  # noqa: F401 - re-exported
from finetty.core.run.launch import rank, world_size  # noqa: F401 - re-exported

FAILURES_DIR = "rank-failures"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_arguments(run_dir: Path, launch: dict, resume: bool, cuda: bool) -> list[str]:
    """The ``accelerate launch`` argument list for a run."""
    kind = launch.get("distributed_type", "ddp")
    args = {"ddp": ["--multi_gpu"], "fsdp": ["--use_fsdp"], "deepspeed": ["--use_deepspeed"]}[kind]
    args += ["--num_processes", str(launch["num_processes"]), "--num_machines", str(launch.get("num_machines", 1)),
             "--machine_rank", str(launch.get("machine_rank", 0)),
             "--mixed_precision", launch.get("mixed_precision", "no"), "--dynamo_backend", "no"]
    port = launch.get("main_process_port") or (29500 if launch.get("num_machines", 1) > 1 else _free_port())
    args += ["--main_process_port", str(port)]
    if launch.get("main_process_ip"):
        args += ["--main_process_ip", launch["main_process_ip"]]
    if kind == "deepspeed":
        if launch.get("deepspeed_config"):
            args += ["--deepspeed_config_file", launch["deepspeed_config"]]
        else:
            args += ["--zero_stage", str(launch.get("zero_stage", 2))]
    if kind == "fsdp":
        for key, value in (launch.get("fsdp") or {}).items():
            args += [f"--{key}", str(value)]
    if not cuda and kind == "ddp":
        args += ["--num_cpu_threads_per_process", "1"]
    args += ["-m", "finetty.core.train.worker", str(run_dir)]
    if resume:
        args.append("--resume")
    return args


def _root_failure(failures: dict) -> tuple[int, object]:
    """The rank that failed first.

    When one rank dies the launcher ends the others with SIGTERM, and those that
    noticed first fail on a lost peer; so a rank killed by another signal comes
    first, then one that failed on its own, then the ones the launcher ended.
    """
    def order(item):
        rank_, failure = item
        return (failure.exitcode == -15, failure.exitcode >= 0, failure.timestamp, rank_)

    ranked = sorted(failures.items(), key=order)
    return ranked[0]


def supervise(run_dir: Path, resume: bool) -> int:
    """Run accelerate's launcher for ``run_dir`` and write the final failure if a rank died."""
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.run.events import TERMINAL, EventWriter, read_all

    recipe = recipe_mod.from_run(run_dir)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ["ACCELERATE_USE_CPU"] = "1"  # ranks talk over gloo
    os.environ["FINETTY_SUPERVISED"] = "1"
    args = launch_command_parser().parse_args(launcher_arguments(run_dir, recipe.launch, resume, cuda))
    try:
        launch_command(args)
        return 0
    except ChildFailedError as exc:
        failed_rank, failure = _root_failure(exc.failures)
        how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else \
            f"exited with code {failure.exitcode}"
        reason = f"rank {failed_rank} {how}; the other ranks were stopped"
        detail = _rank_reason(run_dir, failed_rank)
        if detail:
            reason += f": {detail}"
    except BaseException as exc:  # the launcher itself failed
        reason = f"the launcher failed: {type(exc).__name__}: {exc}"
    if recipe.launch.get("machine_rank", 0) == 0:
        events = read_all(run_dir)
        last_start = max((i for i, e in enumerate(events) if e["type"] == "run_started"), default=-1)
        if not any(e["type"] in TERMINAL for e in events[last_start + 1:]):
            from finetty.core.run import notify

            writer = notify.watch(EventWriter(run_dir), run_dir)  # the notify URLs hear of it too (no app needed)
            writer.emit("run_failed", reason=reason)
            writer.close()
    print(f"[supervisor] {reason}", flush=True)
    return 1


def record_rank_failure(run_dir: Path, reason: str) -> None:
    folder = run_dir / FAILURES_DIR
    folder.mkdir(exist_ok=True)
    (folder / f"rank-{rank()}.txt").write_text(reason)


def _rank_reason(run_dir: Path, failed_rank: int) -> str | None:
    try:
        return (run_dir / FAILURES_DIR / f"rank-{failed_rank}.txt").read_text().strip() or None
    except OSError:
        return None


class RankPrefix:
    """A text stream that starts every line with ``[rank N] ``."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                out.append(self.prefix)
            out.append(piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def share_flags(*flags: bool) -> list[bool]:
    """Any rank's flag set means every rank's is (a max all-reduce); a no-op on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    import torch

    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def global_sum(value: int) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    import torch

    tensor = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return int(tensor.item())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    from finetty.core.run import rundir

    parser = argparse.ArgumentParser(prog="finetty-supervisor")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(argv)
    from finetty.core.run import standby

    launched_with = dict(os.environ)
    run_dir = args.run_dir.resolve()
    if args.lock_fd is None:
        rundir.acquire_lock(run_dir)  # kept open, and so held, until this process ends
    try:
        return supervise(run_dir, args.resume)
    finally:
        if standby.enabled():
            standby.ensure(launched_with)  # as a single-process worker does when it ends


if __name__ == "__main__":
    sys.exit(main())
