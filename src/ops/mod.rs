//! Tensor operations on ndarray (NCHW), each forward beside its hand-written backward.
