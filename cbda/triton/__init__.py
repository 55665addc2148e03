"""Triton kernels of the ``triton`` backend, one file per kernel family.

- ``score``: the fused per-batch kernel (bilinear upsampling, softmax, entropy, pseudo label,
  window statistics, class weight, blocked mask, cut-off test, in-program compaction of the
  candidates, pseudo-label histogram) and the emission kernel for precomputed score maps.
- ``window``: scores of wide windows (r > 2, ripu_pixel's 65×65) from per-pixel maps as
  running per-class counts down column strips (registers independent of r).
- ``greedy``: exact per-image greedy blocking as a chunked scan of each image's sorted
  candidates, one program per image.
- ``topk``: 64-bit orderable keys, the (score desc, index asc) order, and the streaming
  buffer that is trimmed back to exactly K on the device.

Importing this package imports triton; ``import cbda`` never does (the backend module
imports it lazily). On a machine without a GPU set ``TRITON_INTERPRET=1`` before triton is
imported to run the kernels on CPU tensors through the interpreter (the tests do this).
"""
