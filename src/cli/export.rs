//! `ddpm export`: a checkpoint → a diffusers pipeline directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::model_source::ModelSource;
use super::output::refuse_occupied;
use crate::diffusers::{export, ExportOptions};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A ddpm checkpoint or run directory (or a diffusers directory, to rewrite it with current
    /// key names in f32).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// The directory to write: model_index.json, unet/, scheduler/.
    #[arg(long, value_name = "DIR", default_value = "runs/exported")]
    pub out: PathBuf,
    /// Export the raw trained weights instead of their EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Write only a UNet2DModel directory (config.json and the weights) at --out.
    #[arg(long)]
    pub unet_only: bool,
    /// Replace --out if it is an earlier diffusers export (once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    if !a.force {
        // As `sample`, `invert` and `interpolate` refuse theirs: checked before the model is read.
        refuse_occupied(
            &a.out,
            "--out",
            ", or pass --force to replace an earlier export",
        )?;
    }
    let src = ModelSource::open(&a.checkpoint, !a.no_ema)?;
    let notes = export(
        &a.out,
        &src.model,
        &src.weights,
        &src.schedule,
        ExportOptions {
            unet_only: a.unet_only,
            overwrite: a.force,
            // A pipeline read with a DDIM scheduler is written back with one.
            ddim: src.ddim_scheduler,
        },
    )?;
    if !a.quiet {
        for line in src.notes.iter().chain(&notes) {
            eprintln!("{line}");
        }
        let pipeline = if src.ddim_scheduler {
            "a DDIMPipeline directory"
        } else {
            "a DDPMPipeline directory"
        };
        eprintln!(
            "wrote {} ({}) to {}",
            if a.unet_only {
                "a UNet2DModel directory"
            } else {
                pipeline
            },
            src.describe_weights(!a.no_ema),
            a.out.display()
        );
    }
    Ok(())
}
