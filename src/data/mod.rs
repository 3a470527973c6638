//! Datasets and the batch loader (in progress).
