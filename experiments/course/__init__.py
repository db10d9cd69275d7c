"""The course's claims as experiments, one module each: ``python -m experiments.course.<name>``."""
