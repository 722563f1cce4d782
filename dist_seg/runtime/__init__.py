"""Where and how code runs: device and precision (:mod:`.device`), the process group, CPU threads, and
running out of memory as a user error."""
