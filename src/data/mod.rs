//! Loading the data people actually have: numpy pickles (gzipped or not) and MNIST.
