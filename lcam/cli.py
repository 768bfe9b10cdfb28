"""The training command line: LightningCLI over :class:`LCAMModule` and any LightningDataModule."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.cli import ArgsType, LightningCLI

from lcam.training import LCAMModule

__all__ = ["LCAMCLI", "main"]


class LCAMCLI(LightningCLI):
    """LightningCLI whose model is defined by the config, never silently by a checkpoint.

    Plain LightningCLI overwrites the model's config with the hyperparameters saved in a
    ``--ckpt_path`` checkpoint. Here the config stays in charge: the checkpoint is only checked to
    be lcam data, and :meth:`LCAMModule.on_load_checkpoint` refuses one made for another
    configuration (backbone, classes, target layer, input size, head), naming what differs,
    before any weight is loaded.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as error:  # refused unpickling or not a torch file: say which and why
            self.parser.error(
                f"--ckpt_path {ckpt_path} is not a loadable checkpoint (read as data with "
                f"weights_only=True): {str(error).splitlines()[0]}"
            )
        if not isinstance(checkpoint, dict) or "lcam" not in checkpoint:
            self.parser.error(f"--ckpt_path {ckpt_path} is not an lcam training checkpoint")


def main(args: ArgsType = None) -> LightningCLI:
    """``fit`` / ``validate`` / ``test`` / ``predict`` driven by YAML configs and CLI overrides."""
    return LCAMCLI(
        LCAMModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
