//! `ddpm fid SAMPLES [REFERENCE]`: FID and KID with pytorch-fid's Inception, on the CPU
//! (docs/fid.md).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::args::at_least;
use super::output::check_writable_file;
use super::sampling::{progress_bar, progress_fn};
use crate::device::DeviceArg;
use crate::metrics::fid::{feature_fit, fid_from_features, kid, write_stats, Kid, KidOptions};
use crate::metrics::fid_input::{self, Side};
use crate::metrics::inception::{weights, FidInception, FEATURES};
use crate::metrics::{frechet_distance, GaussianFit};
use crate::usage_error::usage;

#[derive(Debug, Args)]
pub struct FidArgs {
    /// The images to score: an image folder, MNIST or CIFAR-10 files (mnist:PATH,
    /// cifar10:PATH), a `ddpm sample --save-raw` .safetensors file, or a statistics .npz.
    #[arg(value_name = "SAMPLES")]
    pub samples: String,
    /// What to compare them with, in the same forms (e.g. the training set, or its statistics
    /// saved once with --save-stats); leave out to only write --save-stats.
    #[arg(value_name = "REFERENCE")]
    pub reference: Option<String>,
    /// The FID Inception weights, converted by scripts/convert_fid_inception.py [default:
    /// ~/.cache/ddpm/pt_inception-2015-12-05.safetensors].
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Write the statistics of SAMPLES (mu, sigma) to this .npz, which pytorch-fid reads.
    #[arg(long, value_name = "FILE")]
    pub save_stats: Option<PathBuf>,
    /// Write the statistics of REFERENCE to this .npz.
    #[arg(long, value_name = "FILE")]
    pub save_reference_stats: Option<PathBuf>,
    /// Images per batch through the Inception (results do not depend on it; memory does,
    /// about 12 MB per image).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = at_least::<1>)]
    pub batch_size: u64,
    /// KID: the number of random subset pairs its mean and standard deviation are over.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = at_least::<1>)]
    pub kid_subsets: u64,
    /// KID: images per subset (capped by the smaller side).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least::<2>)]
    pub kid_subset_size: u64,
    /// Seed of KID's subset draws.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where to run: the Inception runs on the CPU for now (auto and cpu both mean the CPU).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda[:N]")]
    pub device: DeviceArg,
    /// No progress bar or notes on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One side after the network: its fit, and its features when it had images.
struct Measured {
    description: String,
    fit: GaussianFit,
    features: Option<Vec<f32>>,
    images: usize,
    seconds: f64,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        let rate = (self.seconds > 0.0).then(|| self.images as f64 / self.seconds);
        serde_json::json!({
            "source": self.description,
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": rate,
        })
    }
}

fn measure(side: Side, what: &str, net: Option<&FidInception>, a: &FidArgs) -> Result<Measured> {
    match side {
        Side::Stats { path, fit } => Ok(Measured {
            description: format!("statistics {}", path.display()),
            fit,
            features: None,
            images: 0,
            seconds: 0.0,
        }),
        Side::Images(set) => {
            let net = net.context("the Inception is loaded for every side with images")?;
            if !a.quiet {
                eprintln!("{what}: {} ({} images)", set.description, set.len());
            }
            let bar = progress_bar(a.quiet, "images");
            let start = Instant::now();
            let features = set.features(net, a.batch_size as usize, progress_fn(&bar))?;
            let seconds = start.elapsed().as_secs_f64();
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if !a.quiet {
                eprintln!(
                    "{what}: {} images in {seconds:.1} s ({:.2} images/s)",
                    set.len(),
                    set.len() as f64 / seconds.max(1e-9)
                );
            }
            let fit = feature_fit(&features, FEATURES).with_context(|| what.to_string())?;
            Ok(Measured {
                description: set.description.clone(),
                fit,
                features: Some(features),
                images: set.len(),
                seconds,
            })
        }
    }
}

pub fn run(a: FidArgs) -> Result<()> {
    // Usage first, then the files (weights, both sides, all checked), then the long work.
    if let DeviceArg::Cuda(_) = a.device {
        return Err(usage(format!(
            "--device {}: ddpm fid runs the Inception on the CPU for now; pass --device cpu or leave --device out",
            a.device
        )));
    }
    if a.reference.is_none() && a.save_stats.is_none() {
        return Err(usage(
            "nothing to do: give REFERENCE to compare SAMPLES with, or --save-stats FILE to write the statistics of SAMPLES alone",
        ));
    }
    if a.save_reference_stats.is_some() && a.reference.is_none() {
        return Err(usage("--save-reference-stats needs a REFERENCE"));
    }
    for (flag, arg, out) in [
        ("--save-stats", Some(&a.samples), &a.save_stats),
        (
            "--save-reference-stats",
            a.reference.as_ref(),
            &a.save_reference_stats,
        ),
    ] {
        let (Some(arg), Some(out)) = (arg, out) else {
            continue;
        };
        if fid_input::is_stats_file(arg) {
            return Err(usage(format!(
                "{flag}: {arg} is already a statistics file; there is nothing new to write"
            )));
        }
        check_writable_file(out, flag)?;
    }
    if let (Some(s), Some(r)) = (&a.save_stats, &a.save_reference_stats) {
        if s == r {
            return Err(usage(format!(
                "--save-stats and --save-reference-stats are both {}; give two files",
                s.display()
            )));
        }
    }
    let args: Vec<(&str, &str)> = std::iter::once(("SAMPLES", a.samples.as_str()))
        .chain(a.reference.as_deref().map(|r| ("REFERENCE", r)))
        .collect();
    for (what, arg) in &args {
        fid_input::check_exists(arg, what)?;
    }
    let net = if args.iter().all(|(_, arg)| fid_input::is_stats_file(arg)) {
        None
    } else {
        let path = weights::resolve(a.inception.as_deref())?;
        let net = FidInception::load(&path)?;
        if !a.quiet {
            eprintln!(
                "FID Inception: {} (on the CPU, {} threads)",
                path.display(),
                rayon::current_num_threads()
            );
        }
        Some(net)
    };
    let sides = args
        .iter()
        .map(|&(what, arg)| fid_input::open(arg, what))
        .collect::<Result<Vec<_>>>()?;

    let mut measured = Vec::new();
    for (side, (what, _)) in sides.into_iter().zip(&args) {
        measured.push(measure(side, what, net.as_ref(), &a)?);
    }
    for (m, out) in measured
        .iter()
        .zip([&a.save_stats, &a.save_reference_stats])
    {
        if let Some(out) = out {
            write_stats(out, &m.fit)?;
            if !a.quiet {
                eprintln!("wrote {}", out.display());
            }
        }
    }
    let [samples, reference] = match &measured[..] {
        [s, r] => [s, r],
        _ => {
            if a.json {
                println!("{}", serde_json::json!({ "samples": measured[0].json() }));
            }
            return Ok(());
        }
    };
    let fid = match (&samples.features, &reference.features) {
        (Some(x), Some(y)) => fid_from_features(x, y, FEATURES, &samples.fit, &reference.fit)?,
        _ => frechet_distance(&samples.fit, &reference.fit)?,
    };
    let opts = KidOptions {
        subsets: a.kid_subsets as usize,
        subset_size: a.kid_subset_size as usize,
        seed: a.seed,
    };
    let kid_result: Option<Kid> = match (&samples.features, &reference.features) {
        (Some(x), Some(y)) => Some(kid(x, y, FEATURES, &opts)?),
        _ => None,
    };
    let kid_note = kid_result.is_none().then(|| {
        let which: Vec<&str> = [("SAMPLES", samples), ("REFERENCE", reference)]
            .iter()
            .filter(|(_, m)| m.features.is_none())
            .map(|(w, _)| *w)
            .collect();
        format!(
            "KID not computed: {} {}, and KID needs the Inception features of both sides, not just their mean and covariance",
            which.join(" and "),
            if which.len() == 1 { "is a statistics file" } else { "are statistics files" }
        )
    });
    if a.json {
        let v = serde_json::json!({
            "fid": fid,
            "kid": kid_result.map(|k| k.mean),
            "kid_std": kid_result.map(|k| k.std),
            "kid_subsets": kid_result.map(|k| k.subsets),
            "kid_subset_size": kid_result.map(|k| k.subset_size),
            "kid_note": kid_note,
            "samples": samples.json(),
            "reference": reference.json(),
        });
        println!("{v}");
    } else {
        println!("FID: {fid:.4}");
        match (kid_result, &kid_note) {
            (Some(k), _) => println!(
                "KID: {:.6} ± {:.6} (mean ± std over {} subsets of {} images)",
                k.mean, k.std, k.subsets, k.subset_size
            ),
            (None, Some(note)) => println!("{note}"),
            (None, None) => {}
        }
    }
    Ok(())
}
