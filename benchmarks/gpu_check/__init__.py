"""The prepared GPU check (``python -m benchmarks.gpu_check``): the CLI in ``__main__``, the parts' plan and
isolation in ``parts``, in-process measurements in ``measure``, training / torchrun / predict runs in ``runs``,
time-boxed subprocesses in ``proc``, the JSON / Markdown report in ``report``."""
