"""What the tests, the experiments and anyone checking cnn_jax against PyTorch share.

* :mod:`cnn_jax.testing.parity`: NCHW <-> NHWC, scale-relative errors, a layer's forward pass and
  gradients checked against a torch layer with the same weights;
* :mod:`cnn_jax.testing.torch_models`: each registered model's PyTorch reference (torchvision's
  own code where the family is torchvision's, a restatement for the course's networks);
* :mod:`cnn_jax.testing.kinks`: a float32 gradient judged against the float64 gradient of the
  linear piece its own forward pass chose;
* :mod:`cnn_jax.testing.programs`: what a traced program contains (interior-padded pads).

Each imports torch only where it needs it.
"""
