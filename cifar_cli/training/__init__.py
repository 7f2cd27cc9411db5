"""Training and inference. Where to start reading: `loop.train`, the table of contents of a run.

- evaluation: a network's answers (`evaluate`, `predict`) and the batch put on the device (`to_device`).
- trainer: building a run (`build_trainer`): the network, optimizer, one-cycle schedule and batches.
- shadows: the second copy of the weights (--ema's average, --lookahead's slow weights).
- loop: the step (`train_step`), the epoch (`train_one_epoch`) and the run (`train`).
- session: the run folder of one session: each epoch judged and saved, what a stop or divergence leaves.
- lr_find: the learning-rate range test.

Batches come from `data.EpochBatches`; the device, threads, AMP and the collectives in `runtime`; the run's
state between sessions (`Resume`, `RunState`) in `run_state`.
"""
