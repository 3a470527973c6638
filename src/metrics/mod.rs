//! Sample-quality statistics for comparing samplers on one trained model.
//!
//! - [`frechet`]: the Fréchet distance between Gaussian fits of image features (the statistic
//!   behind FID, Heusel et al. 2017), here on average-pooled pixels rather than Inception
//!   activations, so it needs no pretrained network and suits small synthetic datasets.

pub mod frechet;

pub use frechet::{frechet_distance, pooled_features, GaussianFit};
