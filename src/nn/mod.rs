//! Layers with state: parameters, gradients and what backward needs from forward.
