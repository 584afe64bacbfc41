"""How a run spreads over its processes (`--distributed`): DDP, or FSDP2 through Accelerate's plugin.

DDP (the default) keeps every weight, gradient and optimiser state on every process and averages the
gradients. FSDP (`torch.distributed.fsdp.fully_shard`, Accelerate's `FullyShardedDataParallelPlugin` with
`fsdp_version=2`) shards them over the processes: each transformer block is one unit, gathered for its
forward and backward and freed after, and so is each block's text key/value projection (`TextKeyValue`,
which runs before the blocks); the rest (embeddings, head) is the root unit. The frozen tokenizer is not
sharded (the training encodes with it outside the forward pass). Checkpoints are sharded
(torch.distributed.checkpoint, one file per process) and resume bit for bit; the export gathers the full
weights into a plain model first. The tokenizer trains with DDP: docs/scale-out.md says why.

Accelerate turns its FSDP plugin on for GPU (and other accelerator) processes only; on CPU processes (gloo)
the runtime sets Accelerate's distributed type itself, so the same code path runs and is tested on a CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

FSDP_UNITS = ("Block", "TextKeyValue")
"""The module classes each made an FSDP unit (named as Accelerate finds them: by the exact class name)."""
FROZEN_MODULES = "tokenizer"
"""The objective's submodule kept whole on every process (a name, matched in full)."""
_LAUNCH_TYPE = "_nextscale_launch_distributed_type"


def fsdp_plugin(precision: str = "no", checkpointed: bool = False) -> FullyShardedDataParallelPlugin:
    """FSDP2 over every process: one unit per block (`checkpointed`: per activation-checkpointed block) and
    per text key/value projection, parameters resharded after each forward, sharded checkpoints, the frozen
    tokenizer left whole. Under bf16 (fp16) the blocks are gathered and computed in that dtype and their
    gradients reduced in fp32, as DDP reduces them."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from nextscale.train.checkpointing import checkpointed_class
    from nextscale.transformer.block import Block

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low is not None else None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[checkpointed_class(Block).__name__ if checkpointed else FSDP_UNITS[0],
                                       *FSDP_UNITS[1:]],
        reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT", ignored_modules=FROZEN_MODULES,
        cpu_ram_efficient_loading=False, mixed_precision_policy=policy)


def accelerator_options(strategy: str, precision: str, checkpointed: bool) -> dict[str, Any]:
    """Keyword arguments of the run's Accelerator for `strategy` ("ddp" or "fsdp") in `precision`, with the
    blocks activation-checkpointed or not. Accelerate's process state outlives one run: what an earlier FSDP
    run in this process set is undone first."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"--distributed must be ddp or fsdp, got {strategy!r}")
    restore_launch_state()
    return {"fsdp_plugin": fsdp_plugin(precision, checkpointed)} if strategy == "fsdp" else {}


def restore_launch_state() -> None:
    """Undo `enable_fsdp_on_cpu` and the FSDP switch Accelerate leaves in the environment."""
    os.environ.pop("ACCELERATE_USE_FSDP", None)
    shared = PartialState._shared_state
    if _LAUNCH_TYPE in shared:
        shared["distributed_type"] = shared.pop(_LAUNCH_TYPE)


def enable_fsdp_on_cpu(accelerator: Accelerator, strategy: str, checkpointed: bool) -> None:
    """Make a run asked to use FSDP use it on CPU processes too, where Accelerate ignores the plugin
    (it would silently train with DDP). Elsewhere FSDP must be what Accelerate chose."""
    if strategy != "fsdp" or accelerator.distributed_type == DistributedType.FSDP:
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise ValueError(f"--distributed fsdp needs several processes (accelerate launch --num_processes N); "
                         f"this run is {accelerator.distributed_type.value}")
    shared = PartialState._shared_state
    shared.setdefault(_LAUNCH_TYPE, shared["distributed_type"])
    shared["distributed_type"] = DistributedType.FSDP  # AcceleratorState copies PartialState's on every init
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = fsdp_plugin(accelerator.mixed_precision, checkpointed)  # it kept none here


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP parameter (a DTensor), or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def full_state_dict(accelerator: Accelerator, module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The full weights under `prefix` of a prepared module, gathered on the main process (every process
    must call it: it is a collective under FSDP); {} on the others."""
    state = accelerator.get_state_dict(module)
    if not accelerator.is_main_process:
        return {}
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
