"""torch.distributed plumbing for `fit()`: process group, DDP / FSDP2 wrapping, full state dicts.

Launched by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment), or inside a process group the caller
made (torch.multiprocessing.spawn); gloo on CPU, nccl on CUDA. Every checkpoint holds plain full state dicts, so a run
trained on N processes resumes or loads on any number.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("neurallayers.training")

# How long the other ranks wait for rank 0's own work (on_rank_zero, finish) rather than the group's timeout, which
# is sized for a dead peer: tokenizing a corpus runs at ~600k characters/s on 2 cores (8 minutes for 300 MB), and
# a large model's checkpoint or samples take minutes. A rank 0 that dies closes its sockets, failing the wait at once.
RANK_ZERO_WAIT = datetime.timedelta(hours=24)


# How torch's backends word a collective that another process broke off: gloo's when its socket closed (the process
# died), its timeouts (the process hangs) and a pair closed after one; NCCL's aborted communicator and watchdog.
_PEER_LOST = re.compile(r"Connection (closed|reset) by peer|Timed out waiting|Application timeout caused pair closure|"
                        r"NCCL communicator was aborted|Watchdog caught collective operation timeout")


class PeerLostError(RuntimeError):
    """Another process of the run died or stopped answering mid-collective: one line saying so, and where the run
    resumes from, instead of the backend's traceback."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "none"  # "none" | "ddp" | "fsdp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _process_group() -> tuple[int, int, str] | None:
    """(rank, world size, what started it) of the processes this one trains with: a process group the caller has
    already made (torch.multiprocessing.spawn, a launcher of its own, which need not set RANK / WORLD_SIZE), else
    torchrun's environment; None when neither."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return dist.get_rank(), world, f"the caller's process group holds {world} processes"
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        return int(os.environ["RANK"]), world, f"torchrun started {world} processes"
    return None


def init_distributed(mode: str, device_type: str, *, timeout_s: float = 300.0) -> DistInfo:
    """Joins the process group when launched by torchrun with more than one process, or trains in the caller's own
    group (already initialized, e.g. under torch.multiprocessing.spawn) as it is; mode "none" trains in this process
    alone (refused under a multi-process torchrun, whose processes would each write the same run).

    Args:
        mode: TrainConfig.distributed ("auto" | "ddp" | "fsdp" | "none"); auto means ddp.
        device_type: "cpu" (gloo), "cuda" (nccl) or "mps" (not supported distributed).
        timeout_s: how long a collective waits for a dead peer before every rank fails (set when the group is
            created: a later fit() of the same process keeps the first one's).
    """
    group = _process_group()
    if mode in ("ddp", "fsdp") and group is None:  # asked for by name: say why it is one process
        log.warning("train.distributed=%s, but this process was not started by torchrun: training in this one "
                    "process (torchrun --nproc_per_node N -m neurallayers train ... runs N)", mode)
    if mode == "none" and group is not None and group[1] > 1 and launched_by_torchrun():
        # every process would train the whole run alone, each as rank 0, into the same run directory (a caller's own
        # group may train runs of its own in each process: a sweep, each with its own folder)
        raise ValueError(f"TrainConfig.distributed='none', but {group[2]}, which would each train the whole run "
                         "into the same files; use 'auto', 'ddp' or 'fsdp', or start one process "
                         "(neurallayers train ...)")
    if mode == "none" or group is None or group[1] == 1:
        return DistInfo()
    if device_type == "mps":
        raise ValueError("TrainConfig.distributed: multi-process training is not supported on mps; use cpu or cuda")
    rank, world, _ = group
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device_type == "cuda":
        _check_gpu_count(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.cuda.set_device(local)
    if not dist.is_initialized():  # a caller's own process group is used as is
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
        # Kept for the process's later fits (a sweep under torchrun), destroyed at exit: creating the default group
        # again after destroying it hangs inside torch (pytorch/pytorch#74666, #55967; 2 launches in 3 here).
        atexit.register(_destroy_group)
    return DistInfo(rank=rank, world_size=world, local_rank=local, mode="fsdp" if mode == "fsdp" else "ddp")


def peer_lost(error: BaseException, info: DistInfo, resumes_from: str | Callable[[], str]) -> PeerLostError | None:
    """`error` as a PeerLostError where it is a collective that another process broke off (it was killed, ran out of
    memory or hangs past the group's timeout), else None. Its own output says why; this one has nothing to add but
    which rank it is and `resumes_from` (which checkpoint the run goes on from; a callable is asked only for such an
    error: it reads the run directory)."""
    if not info.enabled or not isinstance(error, RuntimeError) or isinstance(error, PeerLostError):
        return None
    found = _PEER_LOST.search(str(error))
    if found is None:
        return None
    # gloo's line: "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:49334. This is typically caused by ..."
    what = str(error)[found.start():].splitlines()[0].split(". ")[0].rstrip(".")
    if callable(resumes_from):
        resumes_from = resumes_from()
    return PeerLostError(f"another process of this {info.world_size}-process run failed or stopped answering "
                         f"({what}), its own output says why; this is rank {info.rank}: {resumes_from}")


def _check_gpu_count(processes: int) -> None:
    """Each process of a machine trains on the GPU of its local rank: more processes than GPUs is refused, on every
    rank alike, before torch's "invalid device ordinal" on some of them and the others waiting for them."""
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise ValueError(f"TrainConfig.device: torchrun started {processes} processes on this machine, which has "
                         f"{gpus} CUDA device(s), one a process; use --nproc_per_node {gpus} (or train.device cpu)")


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` per block, then the root), or the model itself when not distributed."""
    if not info.enabled:
        return model
    if info.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (info.world_size,))
        inner = getattr(model, "encoder", model)  # an encoder's head model keeps its blocks in .encoder
        for block in getattr(inner, "blocks", []):
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The full, unsharded model state dict on CPU. Under FSDP this is a collective: call it on every rank."""
    if info.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """The full optimizer state dict. Under FSDP a collective keyed by parameter name; else torch's own form."""
    if info.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_states(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                info: DistInfo) -> None:
    """Loads full state dicts (every rank read the same files) into the possibly sharded model and optimizer.

    The optimizer state may come from either form (`optimizer_state`): a run checkpointed by one process or under
    DDP resumes under FSDP, and the other way round."""
    by_name = _keyed_by_name(optim_sd)
    _check_state_shapes(model, optimizer, optim_sd, by_name)
    if by_name != (info.mode == "fsdp"):
        optim_sd = _rekey(optim_sd, _param_names(model, optimizer), to_names=not by_name)
    if info.mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_sd, options=opts)
        set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)
        return
    unwrap(model).load_state_dict(model_sd)
    optimizer.load_state_dict(optim_sd)


def _check_state_shapes(model: nn.Module, optimizer: torch.optim.Optimizer, optim_sd: dict, by_name: bool) -> None:
    """Each parameter's optimizer tensors (AdamW's exp_avg, exp_avg_sq) have its shape: the fused and foreach
    kernels do not check, and read and write out of bounds (a crash, or NaN weights checkpointed as good ones)."""
    names = _param_names(model, optimizer)
    shapes = {name: tuple(p.shape) for name, p in unwrap(model).named_parameters()}
    wrong = []
    for key, entry in optim_sd.get("state", {}).items():
        name = key if by_name else names[key] if isinstance(key, int) and 0 <= key < len(names) else None
        if name not in shapes:
            raise ValueError(f"the optimizer state has an entry {key!r} for no parameter of this model")
        for field, value in (entry.items() if isinstance(entry, dict) else ()):
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != shapes[name]:
                wrong.append(f"{name}.{field} {tuple(value.shape)} != {shapes[name]}")
    if wrong:
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ValueError(f"mis-shaped optimizer state: {', '.join(wrong[:3])}{more}")


def _keyed_by_name(optim_sd: dict) -> bool:
    """Whether an optimizer state dict names its parameters (FSDP's full form) rather than numbering them (torch's)."""
    return any(isinstance(p, str) for group in optim_sd.get("param_groups", []) for p in group.get("params", []))


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each of the optimizer's parameters, in the order torch numbers them in its state dict."""
    names = {id(p): name for name, p in unwrap(model).named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekey(optim_sd: dict, names: list[str], *, to_names: bool) -> dict:
    """An optimizer state dict with its parameters numbered (torch's form) turned into one keyed by name, or back;
    the same optimizer built the same way numbers them alike."""
    key = dict(enumerate(names)) if to_names else {name: i for i, name in enumerate(names)}
    try:
        return {"state": {key[k]: v for k, v in optim_sd["state"].items()},
                "param_groups": [{**g, "params": [key[p] for p in g["params"]]} for g in optim_sd["param_groups"]]}
    except KeyError as e:
        raise ValueError(f"the optimizer state names a parameter this model's optimizer does not have: {e}") from None


def on_rank_zero(fn: Callable[[], object], info: DistInfo) -> object:
    """fn() on rank 0 alone, the others waiting for it however long it takes (up to RANK_ZERO_WAIT); its result
    there, None elsewhere.

    Rank 0's error (a bad data path, a logger that cannot start, a full disk) is raised on every rank: the others
    would otherwise wait in their next collective, then fail with gloo's "Connection closed by peer" traceback (or,
    with no launcher to stop them, wait out the process-group timeout)."""
    if not info.enabled:
        return fn()
    result = error = None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:
            error = e
    if not _rank_zero_flag(error is not None, info):  # all went well: one small broadcast (_log's, every log line)
        return result
    box = [_portable(error)]
    dist.broadcast_object_list(box, src=0)
    raise error if error is not None else box[0]


def _rank_zero_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's flag on every rank, the others waiting for rank 0 up to RANK_ZERO_WAIT rather than the group's
    timeout."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    return broadcast_flag(flag, info, device, wait=RANK_ZERO_WAIT)


def _portable(error: Exception | None) -> Exception | None:
    """`error` as it can travel to the other ranks (pickled): itself, or a RuntimeError saying what it was."""
    if error is None:
        return None
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # an exception whose arguments do not pickle, or do not rebuild it
        return RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device | None, *,
                   wait: datetime.timedelta | None = None) -> bool:
    """Rank 0's decision, shared with every rank (so all ranks leave a loop together). `wait`: how long the others
    wait for rank 0 (a broadcast with its own timeout) instead of the group's timeout, sized for a dead peer."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    if wait is None:
        dist.broadcast(t, src=0)
    else:
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.timeout = 0, wait
        dist.group.WORLD.broadcast([t], opts).wait()
    return bool(t.item())


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank's flag is set (a signal may reach the ranks a step apart)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def finish(info: DistInfo) -> None:
    """Every rank done (rank 0 may still be writing samples and the plot: waited for as on_rank_zero waits), then a
    moment for gloo's workers.

    A gloo worker thread frees a finished collective's tensors after the caller has already been told it is
    done, and freeing them takes the GIL. If that lands in interpreter shutdown the thread is unwound and the
    process aborts ("terminate called without an active exception", SIGABRT; torchrun then kills the other
    ranks) -- seen about once in 20 two-process runs. Sleeping releases the GIL so the workers finish first.
    """
    if info.enabled:
        _rank_zero_flag(False, info)
        dist.barrier()
        time.sleep(0.1)


def cleanup(info: DistInfo) -> None:
    if info.enabled:  # an error path skips finish(): give gloo's workers the same moment (see finish), or a rank
        time.sleep(0.1)  # that raised rank 0's error after its last broadcast could abort at exit (SIGABRT)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
