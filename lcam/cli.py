"""The training command line: LightningCLI over :class:`LCAMModule` and any LightningDataModule."""

from __future__ import annotations

from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import ArgsType, LightningCLI

from lcam.module import LCAMModule

__all__ = ["main"]


def main(args: ArgsType = None) -> LightningCLI:
    """``fit`` / ``validate`` / ``test`` / ``predict`` driven by YAML configs and CLI overrides."""
    return LightningCLI(
        LCAMModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
