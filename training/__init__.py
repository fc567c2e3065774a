"""Training for PointSAM, on top of ``pointsam_engine``: ``pointsam pretrain`` and ``pointsam train``.

- ``pointsam pretrain`` (:mod:`training.pretrain`): the small bundled model, trained from scratch on generated scenes.
- ``pointsam train`` (:mod:`training.loop`): a LoRA adapter that fits SAM to a region from its point layers alone
  (PointSAM's self-training, :mod:`training.selftrain`), with its config, checkpoints and log beside it.

The engine never imports this package: its CLI finds the training commands through the ``pointsam.commands``
entry point, and its HTTP API the train jobs through ``pointsam.jobs``.
"""
