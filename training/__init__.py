"""Training for PointSAM: pre-training the bundled model, and (later) point-supervised fine-tuning.

Depends on ``pointsam_engine``; the engine never imports this package (its CLI finds the training
commands through the ``pointsam.commands`` entry point).
"""
