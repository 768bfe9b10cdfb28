"""Where classifiers come from: torchvision, timm, Hugging Face ``transformers``, class paths.

One file per source, each building a network by name and reading what a network says about
itself (input size, normalisation, class names, stage layers) into a
:class:`~lcam.backbone.sources.description.ModelDescription`:

- ``description``: the :class:`ModelDescription` record (no third-party imports);
- ``weights``: weights files as data (``.safetensors``, ``torch.load(weights_only=True)``);
- ``torchvision_models``, ``timm_models``, ``hf_models``: one source each; timm and
  transformers are imported only when a model of theirs is asked for;
- ``trust``: which class paths a checkpoint may name without the user opting in.

:mod:`lcam.backbone.build` puts them together (``build_model``, ``describe_model``).
"""
