//! `ddpm invert`: images → the DDIM noise that decodes to them, with a reconstruction check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::args::{at_least, plural};
use super::output::{check_writable_file, numbered, Naming, OutputDir};
use super::sample::same_dir;
use super::sampling::{
    denoiser, flag_error, open_device, progress_bar, Loaded, ModelArgs, SPACINGS,
};
use crate::atomic_file::write_atomic;
use crate::diffusion::sampler::inversion_evaluations;
use crate::diffusion::Spacing;
use crate::imaging::{save_grid_upscaled, save_png};
use crate::latent;
use crate::sample::{generate_unclamped, GenerateOptions};
use crate::usage_error::usage;

#[derive(Debug, Args)]
pub struct InvertArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images to invert: files (PNG, JPEG, BMP, GIF, recognised by content) or folders (every
    /// image under them, sorted), resized and centre-cropped to the model's size as `ddpm train`
    /// reads a folder.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE|DIR")]
    pub images: Vec<PathBuf>,
    /// DDIM steps of the inversion and of the reconstruction.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = at_least::<1>)]
    pub steps: u64,
    /// Output directory for noise.safetensors, reconstruction_00000.png, …, comparison.png and
    /// report.json; it must be empty or new.
    #[arg(long, value_name = "DIR", default_value = "runs/inverted")]
    pub out: PathBuf,
    /// Replace the earlier output of `ddpm invert` in --out (its noise.safetensors,
    /// reconstruction_*.png, comparison.png and report.json; anything else there is refused,
    /// not removed).
    #[arg(long)]
    pub force: bool,
    /// Timesteps visited: leading, trailing, linspace (diffusers), uniform, quad (DDIM paper
    /// code) [default: the schedule's timestep_spacing, leading unless set].
    #[arg(long, value_name = SPACINGS)]
    pub spacing: Option<String>,
    /// Class of every image, for a class-conditional model (required there).
    #[arg(long, value_name = "K")]
    pub class: Option<u32>,
    /// Enlarge images smaller than the model's size (otherwise they are refused).
    #[arg(long)]
    pub upscale: bool,
    /// Also write the reconstructions as a safetensors tensor `sample` (N, C, H, W), as the
    /// sampler left them: not clamped to [-1, 1] (the PNGs are), the states the errors
    /// reported are of.
    #[arg(long, value_name = "FILE")]
    pub save_raw: Option<PathBuf>,
    /// Images per model evaluation (results do not depend on it).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = at_least::<1>)]
    pub batch_size: u64,
}

/// What `ddpm invert` writes into `--out`.
fn invert_naming(name: &str) -> bool {
    matches!(name, "noise.safetensors" | "comparison.png" | "report.json")
        || numbered(name, "reconstruction_", 5, ".png")
}

/// One image's reconstruction error.
#[derive(serde::Serialize)]
struct ImageReport {
    file: String,
    mse: f64,
    /// `null` for a perfect reconstruction (infinite PSNR).
    psnr_db: Option<f64>,
}

#[derive(serde::Serialize)]
struct Report {
    checkpoint: String,
    steps: usize,
    spacing: String,
    model_evaluations_per_image: usize,
    class: Option<u32>,
    images: Vec<ImageReport>,
    mean_mse: f64,
    /// The mean of the per-image PSNRs (`null` when one is infinite).
    mean_psnr_db: Option<f64>,
}

/// `--class` for inversion and decoding: required by a class-conditional model, refused by an
/// unconditional one and checked against the classes as `ddpm sample` does.
pub(super) fn required_class(loaded: &Loaded, class: Option<u32>) -> Result<Option<u32>> {
    loaded.check_class(class)?;
    match (loaded.real_classes(), class) {
        (Some(k), None) => Err(usage(format!(
            "--class: the model is class-conditional ({k} classes, 0 to {}); say which class the \
             images are with --class K",
            k.saturating_sub(1)
        ))),
        _ => Ok(class),
    }
}

/// `--spacing` parsed, as a usage error naming the flag.
pub(super) fn parse_spacing(s: Option<&str>) -> Result<Option<Spacing>> {
    s.map(|v| {
        v.parse::<Spacing>()
            .map_err(|e| usage(format!("--spacing: {e}")))
    })
    .transpose()
}

/// The file name of a `--save-raw` file that goes into `out` (then it is the command's output
/// too, which `--force` may replace).
pub(super) fn raw_name_in(save_raw: Option<&Path>, out: &Path) -> Option<String> {
    save_raw
        .filter(|r| r.parent().is_some_and(|d| same_dir(d, out)))
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
}

/// Writes the f32 tensor `name` (shape `shape`) with `meta` to `path`, atomically.
pub(super) fn write_tensor(
    path: &Path,
    name: &str,
    shape: Vec<usize>,
    values: &[f32],
    meta: HashMap<String, String>,
) -> Result<()> {
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        shape,
        bytemuck::cast_slice(values),
    )?;
    let bytes = safetensors::serialize([(name, view)], Some(meta))?;
    write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: InvertArgs) -> Result<()> {
    // Nothing is clipped: the inversion cannot undo a clip, so the decoding must not apply one.
    let loaded = Loaded::open(&a.model, true, None)?;
    let (net, schedule) = (&loaded.net, &loaded.schedule);
    let (c, s) = loaded.image_shape();
    let item = c * s * s;
    let spacing = parse_spacing(a.spacing.as_deref())?;
    let opts = latent::ddim_options(schedule, a.steps as usize, spacing);
    let checked = |e| flag_error(schedule, e, None);
    let decode_evals = opts.evaluations(schedule).map_err(checked)?.len();
    let inv = inversion_evaluations(schedule, &opts).map_err(checked)?;
    // Usage first (class), then the files (each error names its file), then the outputs.
    let class = required_class(&loaded, a.class)?;
    let files = latent::image_files(&a.images)?;
    let num = files.len();
    let labels = class.map(|k| vec![k; num]);
    let images = latent::load_images(&files, s, c, a.upscale)?;
    let raw_name = raw_name_in(a.save_raw.as_deref(), &a.out);
    let owns = |name: &str| invert_naming(name) || raw_name.as_deref() == Some(name);
    let naming = Naming {
        command: "ddpm invert",
        pattern: "noise.safetensors, reconstruction_*.png, comparison.png, report.json",
        owns: &owns,
    };
    let mut out_dir = OutputDir::prepare_fresh(&a.out, "--out", a.force, &naming)?;
    if let Some(raw) = &a.save_raw {
        check_writable_file(raw, "--save-raw")?;
    }

    let bar = progress_bar(a.model.quiet, "evaluations");
    let device = open_device(a.model.device, a.model.quiet)?;
    let precision = a.model.precision.resolve(&device)?;
    let batch = (a.batch_size as usize).min(num);
    let mut den = denoiser(&device, &loaded, batch, false, precision)?;
    let batches = num.div_ceil(batch.min(den.max_batch()).max(1)) as u64;
    let total = batches * (inv.len() + decode_evals) as u64;
    if let Some(bar) = &bar {
        bar.set_length(total);
    }
    let mut done = 0u64;
    let noise = latent::invert(
        den.as_mut(),
        net,
        &inv,
        &images,
        labels.as_deref(),
        batch,
        &mut || {
            done += 1;
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        },
    )?;
    let gen = GenerateOptions {
        labels: labels.clone(),
        null_class: loaded.src.null_class,
        ..GenerateOptions::new(opts.clone(), num, batch, 0)
    };
    let recon = generate_unclamped(
        den.as_mut(),
        net,
        schedule,
        &gen,
        Some(&noise),
        &mut |d, _| {
            if let Some(bar) = &bar {
                bar.set_position(done + d);
            }
        },
    )?
    .images;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    // Metrics, then the files. The errors are those of the decoded states as they are (what
    // --save-raw writes), not of their PNGs, which clamp to [-1, 1].
    let per_image: Vec<ImageReport> = files
        .iter()
        .zip(images.chunks_exact(item).zip(recon.chunks_exact(item)))
        .map(|(f, (x, y))| {
            let m = latent::mse(x, y);
            let p = latent::psnr(m);
            ImageReport {
                file: f.display().to_string(),
                mse: m,
                psnr_db: p.is_finite().then_some(p),
            }
        })
        .collect();
    let mean_mse = per_image.iter().map(|r| r.mse).sum::<f64>() / num as f64;
    let mean_psnr = per_image
        .iter()
        .map(|r| r.psnr_db)
        .sum::<Option<f64>>()
        .map(|v| v / num as f64);
    let checkpoint = loaded.src.path.display().to_string();
    out_dir.clear_earlier()?;
    let meta = HashMap::from([
        ("checkpoint".to_string(), checkpoint.clone()),
        ("sampler".to_string(), "ddim".to_string()),
        ("steps".to_string(), a.steps.to_string()),
        ("spacing".to_string(), opts.spacing.to_string()),
    ]);
    write_tensor(
        &a.out.join("noise.safetensors"),
        "noise",
        vec![num, c, s, s],
        &noise,
        meta.clone(),
    )?;
    drop(out_dir); // it holds output now, and stays
    for (i, img) in recon.chunks_exact(item).enumerate() {
        save_png(
            &a.out.join(format!("reconstruction_{i:05}.png")),
            img,
            c,
            s,
            s,
        )?;
    }
    let both = [images.as_slice(), recon.as_slice()].concat();
    save_grid_upscaled(&a.out.join("comparison.png"), &both, 2 * num, c, s, s, num)?;
    let report = Report {
        checkpoint,
        steps: a.steps as usize,
        spacing: opts.spacing.to_string(),
        model_evaluations_per_image: inv.len() + decode_evals,
        class: a.class,
        images: per_image,
        mean_mse,
        mean_psnr_db: mean_psnr,
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let path = a.out.join("report.json");
    write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(raw) = &a.save_raw {
        write_tensor(raw, "sample", vec![num, c, s, s], &recon, meta)?;
    }

    let fmt_psnr = |p: Option<f64>| p.map_or("inf".to_string(), |v| format!("{v:.2}"));
    for r in &report.images {
        println!(
            "{}  mse {:.6}  psnr {} dB",
            r.file,
            r.mse,
            fmt_psnr(r.psnr_db)
        );
    }
    println!(
        "mean  mse {:.6}  psnr {} dB  ({})",
        report.mean_mse,
        fmt_psnr(report.mean_psnr_db),
        plural(num as u64, "image", "images")
    );
    if !a.model.quiet {
        eprintln!(
            "wrote noise.safetensors, {}, comparison.png and report.json to {} (DDIM inversion \
             and η = 0 decoding, {} each, {} spacing, {})",
            plural(num as u64, "reconstruction", "reconstructions"),
            a.out.display(),
            plural(a.steps, "step", "steps"),
            opts.spacing,
            loaded.src.describe_weights(!a.model.no_ema)
        );
    }
    Ok(())
}
