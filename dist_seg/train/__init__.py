"""Training: the step, the loop, the run's wiring, checkpointing, metrics and the recipe parts.

Entry point: ``python -m dist_seg.train`` (:mod:`.cli`). The loop (:mod:`.loop`) reads in one sitting;
:mod:`.step` is the one train step, also timed by ``benchmarks/``.
"""
