//! Layers and the UNet (in progress).
