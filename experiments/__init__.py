"""cnn_jax's experiments and benchmarks: one question per module, each run from the repository
root as ``python -m experiments.<name>`` (``python -m experiments.course.<name>`` for the course's
claims). Not installed with the library; ``experiments/README.md`` lists them with their results.
"""
