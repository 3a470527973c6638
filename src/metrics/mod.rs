//! Sample-quality statistics.
//!
//! - [`frechet`]: the Fréchet distance between Gaussian fits of image features (the statistic
//!   behind FID, Heusel et al. 2017), and a pixel-space variant on average-pooled pixels, which
//!   needs no pretrained network and suits small synthetic datasets;
//! - [`inception`]: pytorch-fid's FID Inception on ddpm's CPU ops (pool3 features);
//! - [`fid`]: FID and KID on those features, and pytorch-fid's statistics files;
//! - [`fid_input`]: the image sources `ddpm fid` reads (folders, MNIST, CIFAR-10, `--save-raw`
//!   tensors, statistics files);
//! - [`npz`]: NumPy `.npz` reading and writing.

pub mod fid;
pub mod fid_input;
pub mod frechet;
pub mod inception;
pub mod npz;

pub use frechet::{frechet_distance, pooled_features, GaussianFit};
