//! How much memory a training or sampling job on the CPU backend needs, checked against the
//! memory available before anything runs, so that a batch too large for the machine is refused
//! with a batch size that fits (as [`crate::cuda::memory`] does for a GPU) instead of ending in
//! `memory allocation of … bytes failed` or the kernel's OOM killer.
//!
//! The CPU allocates as it goes and frees each buffer when the pass is done with it, so the need
//! is an estimate, not an exact sum as on the GPU:
//!
//! - weights, gradients, AdamW's two moments and the EMA: five f32 arrays of
//!   [`ParamLayout::arena_len`](crate::params::ParamLayout::arena_len) elements;
//! - the batch tensors of a step (x₀ and the data loader's prefetched batches, ε, the target);
//! - the activations: a fraction ([`TRAINING_FRACTION`], [`INFERENCE_FRACTION`]) of the sum of
//!   every buffer the pass allocates, as [`UNet::plan_step`] adds them up (that sum is what the
//!   GPU allocates at once; the CPU's live peak, the forward's tape plus the few gradients alive
//!   at a time, is a stable fraction of it);
//! - between training steps, the sample grid's sampler, and a checkpoint being written (four
//!   parameter-sized copies and their encoding), which is counted on top of the step: the
//!   allocator may still hold the step's freed memory then (ddpm-cifar10 at batch 8 peaked
//!   while saving, above the weights, optimizer state and checkpoint together);
//! - the ops' per-thread scratch (im2col columns, attention probabilities), from the op
//!   geometries the plan lists, times the worker threads;
//! - [`MARGIN`]: the program itself, its threads and the allocator's slack.
//!
//! The estimate follows the network: a change in what the pass allocates changes the plan, and
//! the estimate with it. Being an estimate, it can be overruled: [`SKIP_ENV`]`=1` skips the
//! check.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::nn::UNet;

/// Room for the program, its threads' stacks, GEMM packing buffers and the allocator's slack.
pub const MARGIN: usize = 96 << 20;

/// The fraction of the planner's sum of every buffer a training pass (forward with tape, and
/// backward) allocates that is alive at its peak on the CPU.
///
/// Measured with `ddpm bench train --device cpu --steps 2 --warmup 1` under `/usr/bin/time -v`
/// (two cores, glibc malloc): the growth of the peak resident set over the growth of the
/// planned sum was 0.38 (tiny, batch 128 → 512), 0.33 (cifar10-small, 32 → 128) and 0.32
/// (ddpm-cifar10, 8 → 32 → 64); at small batches, where fixed scratch weighs more, up to 0.48
/// (tiny, 1 → 32), which [`MARGIN`] covers. With later, leaner CPU ops: 0.35 (tiny) and 0.30
/// (ddpm-cifar10, 1 → 64). 0.45 keeps about a fifth to spare over the largest ratio at large
/// batches. Whole `ddpm train` runs (loader, sample grids, checkpoints) peaked at 0.56 to 0.78
/// of [`bytes_needed`] + [`MARGIN`] (tiny at 128 and 512, cifar10-small at 32, ddpm-cifar10 at
/// 8 and 64).
pub const TRAINING_FRACTION: f64 = 0.45;

/// The same for an inference pass (no tape: each buffer is freed once the next layer has read
/// it, and only the skip connections wait for the up path). Measured with `ddpm sample
/// --device cpu --sampler ddim --steps 2`: 0.21 (tiny, batch 1 → 1024), 0.11 (cifar10-small,
/// 1 → 256), over the planned sum, the sampler's own buffers included.
pub const INFERENCE_FRACTION: f64 = 0.25;

/// What the memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Training steps at the batch size checked, with the data loader holding `prefetch`
    /// batches ahead, and the sampler drawing sample grids of `grid` images (one batch) with
    /// the EMA weights between steps. A `resumed` run keeps its checkpoint's batch size, so the
    /// advice differs.
    Train {
        grid: usize,
        prefetch: usize,
        resumed: bool,
    },
    /// `ddpm sample` of `num` images at the batch size checked (images per evaluation; twice
    /// that many go through the model under classifier-free guidance), keeping `watch`
    /// intermediate states of each image (`--progression`). The weights are loaded before the
    /// check, so they are not counted: they are already out of what is available.
    Sample {
        num: usize,
        guided: bool,
        watch: usize,
    },
}

impl Job {
    fn verb(self) -> &'static str {
        match self {
            Job::Train { .. } => "training",
            Job::Sample { .. } => "sampling",
        }
    }
}

const F32: usize = std::mem::size_of::<f32>();

/// Bytes the ops allocate for themselves, at most, for the op geometries of a planned pass:
/// on each worker thread, the packed convolution's panels and C block
/// ([`crate::ops::conv2d::packed::scratch_per_thread`]; a strided convolution's input gradient
/// also an im2col buffer per image) or one head's attention probabilities; and once, the
/// convolution's padded input and output copies and its packed weights (at most twice its
/// input and output, plus the weights).
fn scratch_bytes(plan: &crate::backend::plan::Planner<f32>, threads: usize) -> usize {
    let per_thread = plan
        .convs
        .iter()
        .map(|g| {
            let out = g.output();
            let im2col = if g.stride == (1, 1) {
                0
            } else {
                g.patch_len() * out.h * out.w
            };
            crate::ops::conv2d::packed::scratch_per_thread(g) + im2col
        })
        .chain(plan.attentions.iter().map(|a| 2 * a.len * a.len))
        .max()
        .unwrap_or(0);
    let operands = plan
        .convs
        .iter()
        .map(|g| 2 * (g.input.len() + g.output().len()) + g.weight_len())
        .max()
        .unwrap_or(0);
    F32 * (threads * per_thread + operands)
}

/// Activations of one pass of `batch` images (`training`: forward with tape and backward), and
/// the ops' scratch on `threads` threads.
fn pass_bytes(net: &UNet, batch: usize, training: bool, threads: usize) -> Result<usize> {
    let plan = net.plan_step::<f32>(batch, training)?;
    let fraction = if training {
        TRAINING_FRACTION
    } else {
        INFERENCE_FRACTION
    };
    let activations = (plan.arena_bytes as f64 * fraction).ceil() as usize;
    Ok(activations + scratch_bytes(&plan, threads))
}

/// Bytes of a sampling run's model evaluations at `batch` images each: the activations and the
/// sampler's image-sized buffers (x_t, the next x, x̂₀, the step noise, the model's input and
/// output copies, a multistep sampler's history).
fn sampler_bytes(net: &UNet, batch: usize, guided: bool, threads: usize) -> Result<usize> {
    let item = net.input_shape(1).len();
    let model_batch = if guided { 2 * batch } else { batch };
    Ok(pass_bytes(net, model_batch, false, threads)? + F32 * 10 * model_batch * item)
}

/// CPU bytes a job needs at batch size `batch` on `threads` worker threads (without
/// [`MARGIN`]).
pub fn bytes_needed_on(net: &UNet, job: Job, batch: usize, threads: usize) -> Result<usize> {
    let p = net.layout.arena_len();
    let item = net.input_shape(1).len();
    let images = |n: usize| F32 * n * item;
    Ok(match job {
        Job::Train { grid, prefetch, .. } => {
            // Weights, gradients, Adam m and v, EMA.
            let state = F32 * 5 * p;
            // The loader's batches: `prefetch` queued, one being assembled, the step's own.
            let loader = (prefetch + 2) * (images(batch) + F32 * batch);
            // ε and the target (x_t, the output and its gradient are in the plan), t.
            let step = 2 * images(batch) + 2 * F32 * batch + pass_bytes(net, batch, true, threads)?;
            // Between steps: a copy of the EMA weights, and the grid of images drawn with them.
            let grid = F32 * p + images(grid) + sampler_bytes(net, grid.max(1), false, threads)?;
            // A checkpoint: weights, EMA, m and v copied, then encoded in one buffer. Counted
            // on top of the step's memory, which the allocator may still hold then (the
            // step's buffers are freed, but not always given back to the system).
            let checkpoint = F32 * 8 * p;
            state + loader + step.max(grid) + checkpoint
        }
        Job::Sample { num, guided, watch } => {
            // The images kept (and their clamped copies for the files), the watched states.
            images(num) * (2 + 2 * watch) + sampler_bytes(net, batch, guided, threads)?
        }
    })
}

/// [`bytes_needed_on`] with rayon's worker threads, the ones the ops run on.
pub fn bytes_needed(net: &UNet, job: Job, batch: usize) -> Result<usize> {
    bytes_needed_on(net, job, batch, rayon::current_num_threads())
}

/// The largest `b` in 1..=`max` for which `fits(b)`, given that a batch that fits is never
/// larger than one that does not: a binary search. `None` when not even 1 fits.
pub fn largest_fitting(
    max: usize,
    mut fits: impl FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    if max == 0 || !fits(1)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(Some(lo))
}

/// Memory the job can still take, and where that figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: usize,
    /// `MemAvailable in /proc/meminfo`, or the cgroup whose limit is the tighter.
    pub source: String,
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The message for a job that does not fit: what it needs, what is available, and what to try.
pub fn out_of_memory_message(
    net: &UNet,
    job: Job,
    batch: usize,
    available: &Available,
    threads: usize,
) -> Result<String> {
    let need = bytes_needed_on(net, job, batch, threads)? + MARGIN;
    let fits = |b| Ok(bytes_needed_on(net, job, b, threads)? + MARGIN <= available.bytes);
    let hint = match largest_fitting(batch.saturating_sub(1), fits)? {
        Some(b) if matches!(job, Job::Train { resumed: true, .. }) => format!(
            "a resumed run keeps its batch size: free some memory, or start a new run with \
             --batch-size {b}"
        ),
        Some(b) => format!("try --batch-size {b}"),
        None => match job {
            Job::Train { .. } => {
                "even a batch of 1 does not fit: the model is too large for this machine's memory"
                    .into()
            }
            Job::Sample { .. } => "even a batch of 1 does not fit: draw fewer images (--num) \
                                   or free some memory"
                .into(),
        },
    };
    Ok(format!(
        "out of memory: {} at batch {batch} needs about {:.2} GiB on the CPU, and {:.2} GiB are \
         available ({}); {hint} (or set {SKIP_ENV}=1 to run it anyway)",
        job.verb(),
        gib(need),
        gib(available.bytes),
        available.source
    ))
}

/// Fails with [`out_of_memory_message`] when the job needs more than `available`.
pub fn check_fits_in(net: &UNet, job: Job, batch: usize, available: &Available) -> Result<()> {
    let threads = rayon::current_num_threads();
    if bytes_needed_on(net, job, batch, threads)? + MARGIN > available.bytes {
        anyhow::bail!(out_of_memory_message(net, job, batch, available, threads)?);
    }
    Ok(())
}

/// Set to `1`, skips [`check_fits`]: the need is an estimate, and this runs a job it refuses
/// anyway.
pub const SKIP_ENV: &str = "DDPM_NO_MEMORY_CHECK";

/// Fails with [`out_of_memory_message`] when the job cannot fit in the memory available now
/// ([`available`]). Where that cannot be read (not Linux), or with [`SKIP_ENV`] set to `1`,
/// nothing is checked.
pub fn check_fits(net: &UNet, job: Job, batch: usize) -> Result<()> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    match available() {
        Some(a) => check_fits_in(net, job, batch, &a),
        None => Ok(()),
    }
}

/// Memory this process can still allocate: the smaller of the kernel's `MemAvailable` (free
/// memory plus what the page cache can give back) and the headroom under the memory limit of
/// each cgroup this process is in (cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`, less
/// the usage net of its inactive page cache, which the kernel reclaims before it fails an
/// allocation). `None` when neither can be read: not Linux, or /proc not mounted; the check is
/// then skipped.
pub fn available() -> Option<Available> {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_available(&t))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| cgroup_headroom(Path::new("/sys/fs/cgroup"), &t));
    match (mem, cgroup) {
        (Some(m), Some(c)) if c.bytes < m.bytes => Some(c),
        (Some(m), _) => Some(m),
        (None, c) => c,
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut f = line.split_whitespace().skip(1);
    let value: usize = f.next()?.parse().ok()?;
    match f.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// One number from a cgroup file; `None` for `max` (no limit) or anything unreadable.
fn read_number(path: &Path) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A field of a cgroup's `memory.stat`.
fn stat_field(dir: &Path, field: &str) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == field).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The headroom under the tightest memory limit of the cgroups (and their ancestors) listed in
/// `proc_self_cgroup` (the text of /proc/self/cgroup), under the cgroup file systems mounted at
/// `root`: v2 at `root` (or `root/unified` on a hybrid system), v1's memory controller at
/// `root/memory`. Inside a cgroup namespace the listed path may not exist under `root`; then
/// `root`'s own files (the namespace's cgroup) are read.
fn cgroup_headroom(root: &Path, proc_self_cgroup: &str) -> Option<Available> {
    let mut best: Option<Available> = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        let (mounts, limit, usage, inactive): (Vec<PathBuf>, _, _, _) = if controllers.is_empty() {
            (
                vec![root.to_path_buf(), root.join("unified")],
                "memory.max",
                "memory.current",
                "inactive_file",
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                vec![root.join("memory")],
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )
        } else {
            continue;
        };
        for mount in mounts {
            let own = mount.join(rel);
            let start = if own.join(limit).exists() {
                own
            } else if mount.join(limit).exists() {
                mount.clone()
            } else {
                continue;
            };
            // This cgroup and each ancestor up to the mount point: every limit applies.
            let mut dir = Some(start.as_path());
            while let Some(d) = dir.filter(|d| d.starts_with(&mount)) {
                if let (Some(max), Some(used)) =
                    (read_number(&d.join(limit)), read_number(&d.join(usage)))
                {
                    let reclaimable = stat_field(d, inactive).unwrap_or(0);
                    let headroom = max.saturating_sub(used.saturating_sub(reclaimable));
                    if best.as_ref().is_none_or(|b| headroom < b.bytes) {
                        best = Some(Available {
                            bytes: headroom,
                            source: format!("the memory limit of cgroup {}", d.display()),
                        });
                    }
                }
                dir = d.parent();
            }
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::UNetConfig;

    const TRAIN: Job = Job::Train {
        grid: 16,
        prefetch: 4,
        resumed: false,
    };
    const SAMPLE: Job = Job::Sample {
        num: 16,
        guided: false,
        watch: 0,
    };

    fn tiny() -> UNet {
        UNet::new(UNetConfig::preset("tiny").unwrap()).unwrap()
    }

    #[test]
    fn the_need_grows_with_the_batch_and_the_activations_dominate() {
        let net = tiny();
        for job in [TRAIN, SAMPLE] {
            let need = |b| bytes_needed_on(&net, job, b, 2).unwrap();
            let mut last = 0;
            for b in [1, 2, 3, 8, 16, 17, 32, 64, 100, 1000] {
                assert!(need(b) > last, "{job:?} at {b}");
                last = need(b);
            }
            // Far from the fixed part, twice the batch needs nearly twice the memory.
            let (a, b) = (need(1000) - need(1), need(2000) - need(1));
            assert!(b > 19 * a / 10 && b < 21 * a / 10, "{job:?}: {a} {b}");
        }
    }

    #[test]
    fn a_known_config_needs_its_state_loader_step_and_activations() {
        let net = tiny();
        let p = net.layout.arena_len();
        let item = net.input_shape(1).len();
        assert_eq!(item, 3 * 16 * 16);
        let (b, threads) = (32, 2);
        let plan = net.plan_step::<f32>(b, true).unwrap();
        let train = bytes_needed_on(&net, TRAIN, b, threads).unwrap();
        let expected = 4 * 5 * p // weights, grads, m, v, EMA
            + 6 * 4 * (b * item + b) // the loader's 4 + 2 batches
            + 2 * 4 * (b * item + b) // ε, target, t
            + (plan.arena_bytes as f64 * TRAINING_FRACTION).ceil() as usize
            + scratch_bytes(&plan, threads)
            + 4 * 8 * p; // a checkpoint being written
        assert!(train.abs_diff(expected) <= 1, "{train} vs {expected}");
        // The tiny model at its usual batch: about 0.13 GiB (a whole run at batch 32 peaked at
        // 0.09 GiB resident).
        assert!((110 << 20..160 << 20).contains(&train), "{train}");
        // More threads, more scratch.
        assert!(bytes_needed_on(&net, TRAIN, b, 64).unwrap() > train);
    }

    #[test]
    fn training_needs_more_than_sampling_and_guidance_doubles_the_model_batch() {
        let net = tiny();
        let need = |job, b| bytes_needed_on(&net, job, b, 2).unwrap();
        assert!(need(TRAIN, 32) > need(SAMPLE, 32) + 4 * 5 * net.layout.arena_len());
        let guided = Job::Sample {
            num: 16,
            guided: true,
            watch: 0,
        };
        assert!(need(guided, 32) > need(SAMPLE, 48));
        let watched = Job::Sample {
            num: 16,
            guided: false,
            watch: 10,
        };
        assert_eq!(
            need(watched, 32) - need(SAMPLE, 32),
            4 * 16 * net.input_shape(1).len() * 20
        );
    }

    #[test]
    fn the_suggested_batch_is_the_largest_that_fits() {
        let net = tiny();
        let threads = rayon::current_num_threads();
        for job in [TRAIN, SAMPLE] {
            let need = |b| bytes_needed_on(&net, job, b, threads).unwrap() + MARGIN;
            let avail = |bytes| Available {
                bytes,
                source: "test".into(),
            };
            let fits = |free: usize| move |b| Ok(need(b) <= free);
            assert_eq!(largest_fitting(1000, fits(need(37))).unwrap(), Some(37));
            assert_eq!(largest_fitting(1000, fits(need(37) - 1)).unwrap(), Some(36));
            assert_eq!(largest_fitting(20, fits(need(37))).unwrap(), Some(20));
            assert_eq!(largest_fitting(1000, fits(need(1) - 1)).unwrap(), None);

            assert!(check_fits_in(&net, job, 37, &avail(need(37))).is_ok());
            let err = check_fits_in(&net, job, 128, &avail(need(37)))
                .unwrap_err()
                .to_string();
            let verb = job.verb();
            assert!(
                err.contains(&format!("{verb} at batch 128 needs about")),
                "{err}"
            );
            assert!(err.contains("GiB are available (test)"), "{err}");
            assert!(err.contains("try --batch-size 37"), "{err}");
            let err = check_fits_in(&net, job, 128, &avail(1 << 20))
                .unwrap_err()
                .to_string();
            assert!(err.contains("even a batch of 1 does not fit"), "{err}");
        }
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24683772 kB\nMemFree:        20000000 kB\n\
                       MemAvailable:   23700272 kB\nBuffers:          100 kB\n";
        assert_eq!(mem_available(meminfo), Some(23700272 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_limits_are_read_from_v2_and_v1_with_their_ancestors() {
        let root = std::env::temp_dir().join(format!("ddpm-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // v2: the job's cgroup is unlimited, its parent is limited to 8 GiB with 3 GiB used,
        // of which 1 GiB is inactive page cache.
        write(&root.join("user/job/memory.max"), "max\n");
        write(&root.join("user/job/memory.current"), "1000\n");
        write(
            &root.join("user/memory.max"),
            &format!("{}\n", 8usize << 30),
        );
        write(
            &root.join("user/memory.current"),
            &format!("{}\n", 3usize << 30),
        );
        write(
            &root.join("user/memory.stat"),
            &format!("anon 5\ninactive_file {}\nactive_file 7\n", 1usize << 30),
        );
        let got = cgroup_headroom(&root, "0::/user/job\n").unwrap();
        assert_eq!(got.bytes, 6 << 30);
        assert!(got.source.ends_with("user"), "{}", got.source);
        // Not limited anywhere: nothing to say.
        assert_eq!(cgroup_headroom(&root, "0::/other\n"), None);

        // v1 (memory controller), the listed path not visible (a cgroup namespace): the
        // mount's own files.
        write(&root.join("memory/memory.limit_in_bytes"), "4294967296\n");
        write(&root.join("memory/memory.usage_in_bytes"), "1073741824\n");
        write(
            &root.join("memory/memory.stat"),
            "cache 5\ntotal_inactive_file 0\n",
        );
        let got = cgroup_headroom(&root, "4:memory:/somewhere/else\n3:cpu:/\n").unwrap();
        assert_eq!(got.bytes, 3 << 30);
        // Both listed: the tighter wins.
        let got = cgroup_headroom(&root, "4:memory:/x\n0::/user/job\n").unwrap();
        assert_eq!(got.bytes, 3 << 30);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
