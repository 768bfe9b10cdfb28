"""Old import path, kept for one release: multi-process inference now lives in
:mod:`lcam.inference.distributed`."""

from lcam.inference.distributed import (
    DistributedWriter,
    ExplainModule,
    LaunchError,
    run_distributed_inference,
)

__all__ = ["DistributedWriter", "ExplainModule", "LaunchError", "run_distributed_inference"]
