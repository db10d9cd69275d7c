"""The run machinery on top of the pure steps: a run's config, what it builds, the training
loop, its work directory and checkpoints, what stops it, and the trained run loaded back.

* :mod:`~cnn_jax.train.run.config`: defaults, validation, ``resolve``, ``override``, files;
* :mod:`~cnn_jax.train.run.setup`: what a resolved config builds (data, model, optimiser,
  step options, placement);
* :mod:`~cnn_jax.train.run.feeds`: what the steps receive (host or device feed, evaluation);
* :mod:`~cnn_jax.train.run.loop`: ``fit``, epoch by epoch;
* :mod:`~cnn_jax.train.run.progress`: what a run shows as it goes;
* :mod:`~cnn_jax.train.run.workdir`, :mod:`~cnn_jax.train.run.checkpoint`: the run's files;
* :mod:`~cnn_jax.train.run.guards`: signals and fault-test failpoints;
* :mod:`~cnn_jax.train.run.results`: ``load_run``, ``evaluate_workdir``, ``init_from``.

Nothing in the step maths or the distribution (:mod:`cnn_jax.train.step`, ``state``, ``optim``,
``parallel``) imports from here (``tests/test_layout.py``). The public names are
:mod:`cnn_jax.train`'s.
"""
