"""The experiment runner: command line, child output, launcher, process trees, jobs, signals, deployment."""
