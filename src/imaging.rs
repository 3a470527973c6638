//! PNG output, image grids and the loss curve (in progress).
