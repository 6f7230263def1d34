"""One short adapter per trainer over the run core (:class:`~mlx_sched_callbacks.run.TrainingRun`).

``mlx_lm`` (``MlxLmTraining``, mlx-lm's ``train()``), ``mlx_lm_lora`` (``MlxLmLoraTraining``,
its SFT, DPO, ORPO, GRPO, ... trainers) and ``mlx_vlm`` (``MlxVlmTraining``, mlx-vlm's engine),
and ``common``, what they share. Import the one you use: the other trainers may not be
installed (``mlx-lm-lora`` and ``mlx-vlm`` are extras).
"""

__all__: list[str] = []
