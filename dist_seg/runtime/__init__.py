"""Where and how code runs: device and precision (:mod:`.device`), the process group, CPU threads, out-of-memory as a user error."""
