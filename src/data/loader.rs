//! Batches as a pure function of (dataset, seed, step, batch size, flip), and a background thread
//! that prepares them ahead of the training loop.
//!
//! The images are visited in epochs: epoch `e` is a permutation of 0..N drawn by Fisher–Yates
//! from the Philox stream `SHUFFLE_STREAM + e`, and the epochs are laid end to end into one
//! endless stream of image indices. Batch `s` takes positions `s·B .. s·B + B` of that stream (so
//! it may straddle two epochs). Whether item `j` of batch `s` is mirrored is decided by word
//! `s·B + j` of the stream `FLIP_STREAM`. Nothing depends on earlier batches or on threads, so a
//! run resumed at step `k` sees exactly the batches an uninterrupted run would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Dataset;
use crate::rng::{philox_word, Philox};

/// Philox stream of epoch 0's shuffle (ASCII "shuf" in the upper half); epoch `e` uses this
/// plus `e`.
pub const SHUFFLE_STREAM: u64 = 0x7368_7566_0000_0000;
/// Philox stream of the horizontal-flip decisions (ASCII "flip" in the upper half).
pub const FLIP_STREAM: u64 = 0x666c_6970_0000_0000;

/// One training batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The training step this batch belongs to.
    pub step: u64,
    /// (B, C, S, S) in [-1, 1].
    pub x: Vec<f32>,
    /// (B) class indices, when the dataset is labeled.
    pub labels: Option<Vec<u32>>,
}

/// Unbiased integer in 0..bound (Lemire's multiply-and-reject), consuming one or more words.
fn below(rng: &mut Philox, bound: u32) -> u32 {
    debug_assert!(bound > 0);
    // Products whose low half falls below 2³² mod bound would over-represent some results.
    let reject_below = bound.wrapping_neg() % bound;
    loop {
        let m = u64::from(rng.next_u32()) * u64::from(bound);
        if m as u32 >= reject_below {
            return (m >> 32) as u32;
        }
    }
}

/// The order in which epoch `epoch` visits the `n` images.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    assert!(
        u32::try_from(n).is_ok(),
        "epoch_permutation: {n} images do not fit u32 indices"
    );
    let mut perm: Vec<u32> = (0..n as u32).collect();
    let mut rng = Philox::with_stream(seed, SHUFFLE_STREAM.wrapping_add(epoch));
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u32 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// The permutations of the last two epochs used: a batch spans at most two, and the loader thread
/// walks forward, so each permutation is drawn once.
struct EpochOrder {
    n: usize,
    seed: u64,
    cache: Vec<(u64, Vec<u32>)>,
}

impl EpochOrder {
    fn new(n: usize, seed: u64) -> Self {
        assert!(n > 0, "data loader: the dataset is empty");
        Self {
            n,
            seed,
            cache: Vec::new(),
        }
    }

    /// Image index at `pos` of the endless stream of epochs.
    fn index(&mut self, pos: u64) -> usize {
        let n = self.n as u64;
        let (epoch, k) = (pos / n, (pos % n) as usize);
        if let Some((_, perm)) = self.cache.iter().find(|(e, _)| *e == epoch) {
            return perm[k] as usize;
        }
        if self.cache.len() == 2 {
            self.cache.remove(0);
        }
        let perm = epoch_permutation(self.n, self.seed, epoch);
        let i = perm[k] as usize;
        self.cache.push((epoch, perm));
        i
    }

    fn batch(&mut self, step: u64, batch_size: usize) -> Vec<usize> {
        let start = step * batch_size as u64;
        (0..batch_size as u64)
            .map(|j| self.index(start + j))
            .collect()
    }
}

/// Indices of the images in batch `step` of a dataset of `n` images.
pub fn batch_indices(n: usize, seed: u64, step: u64, batch_size: usize) -> Vec<usize> {
    EpochOrder::new(n, seed).batch(step, batch_size)
}

/// Whether item `j` of batch `step` is mirrored (when flipping is on).
fn flips(seed: u64, step: u64, batch_size: usize, j: usize) -> bool {
    philox_word(seed, FLIP_STREAM, step * batch_size as u64 + j as u64) >> 31 == 1
}

fn assemble(
    ds: &Dataset,
    order: &mut EpochOrder,
    seed: u64,
    step: u64,
    batch_size: usize,
    hflip: bool,
) -> Batch {
    let (s, chw) = (ds.size, ds.image_len());
    let indices = order.batch(step, batch_size);
    let mut x = vec![0f32; batch_size * chw]; // (B, C, S, S)
    for (j, (&i, out)) in indices.iter().zip(x.chunks_exact_mut(chw)).enumerate() {
        let src = ds.image(i);
        let mirror = hflip && flips(seed, step, batch_size, j);
        for (row_out, row_in) in out.chunks_exact_mut(s).zip(src.chunks_exact(s)) {
            for (k, v) in row_out.iter_mut().enumerate() {
                let from = if mirror { s - 1 - k } else { k };
                *v = f32::from(row_in[from]) / 127.5 - 1.0;
            }
        }
    }
    let labels = ds
        .labels
        .as_ref()
        .map(|l| indices.iter().map(|&i| l[i]).collect());
    Batch { step, x, labels }
}

/// Batch `step`: positions `step·B .. step·B + B` of the shuffled epochs, pixels mapped from
/// 0..=255 to [-1, 1], each item mirrored left–right with probability ½ when `hflip`.
///
/// Panics on an empty dataset, which [`Dataset::new`] and [`super::load`] never return.
pub fn make_batch(ds: &Dataset, seed: u64, step: u64, batch_size: usize, hflip: bool) -> Batch {
    let mut order = EpochOrder::new(ds.len(), seed);
    assemble(ds, &mut order, seed, step, batch_size, hflip)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub hflip: bool,
    /// First step to produce: 0 for a new run, the checkpoint's step when resuming.
    pub start_step: u64,
    /// Batches prepared ahead of the consumer (the channel's capacity; 0 hands each batch over
    /// directly, with one being prepared while the consumer trains).
    pub prefetch: usize,
}

/// Produces `make_batch` for steps `start_step`, `start_step + 1`, … on a background thread,
/// at most `prefetch` batches ahead. Dropping it stops and joins the thread.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    next_step: u64,
}

impl Loader {
    /// Panics on an empty dataset, as [`make_batch`] does.
    pub fn spawn(ds: Arc<Dataset>, cfg: LoaderConfig) -> Loader {
        assert!(!ds.is_empty(), "data loader: the dataset is empty");
        let (tx, rx) = sync_channel(cfg.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let next_step = cfg.start_step;
        let handle = std::thread::Builder::new()
            .name("ddpm-data-loader".into())
            .spawn(move || {
                let mut order = EpochOrder::new(ds.len(), cfg.seed);
                for step in cfg.start_step.. {
                    if stop_flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch =
                        assemble(&ds, &mut order, cfg.seed, step, cfg.batch_size, cfg.hflip);
                    if tx.send(batch).is_err() {
                        break; // the receiver is gone
                    }
                }
            })
            .expect("cannot start the data loader thread");
        Loader {
            rx: Some(rx),
            stop,
            handle: Some(handle),
            next_step,
        }
    }

    /// The step of the batch the next call returns.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// The next batch, waiting for the thread if it is not ready. A panic on the loader thread
    /// is re-raised here.
    pub fn next_batch(&mut self) -> Batch {
        let received = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        match received {
            Some(batch) => {
                debug_assert_eq!(batch.step, self.next_step);
                self.next_step += 1;
                batch
            }
            None => {
                if let Some(Err(payload)) = self.handle.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(payload);
                }
                panic!("data loader: the background thread stopped unexpectedly");
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    /// Never ends.
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a thread blocked on a full channel: its send fails.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            // A panic there has either been re-raised by next_batch or is not ours to raise now.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_is_roughly_uniform() {
        let mut rng = Philox::new(3);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6) as usize] += 1;
        }
        // Expected 10 000 each, standard deviation ≈ 91.
        for c in counts {
            assert!((9_600..=10_400).contains(&c), "{counts:?}");
        }
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn permutations_are_permutations_and_differ_between_epochs() {
        let a = epoch_permutation(1000, 5, 0);
        let b = epoch_permutation(1000, 5, 1);
        for p in [&a, &b] {
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert!(sorted.iter().enumerate().all(|(i, &v)| v as usize == i));
        }
        assert_ne!(a, b);
        assert_ne!(a, epoch_permutation(1000, 6, 0));
        assert_eq!(epoch_permutation(1, 5, 0), [0]);
    }

    #[test]
    fn every_position_of_a_small_permutation_is_equally_likely() {
        // Over many epochs, element 0 should land in each of 4 places about a quarter of the time:
        // catches an off-by-one in the Fisher–Yates range (e.g. `below(i)` instead of `below(i+1)`).
        let mut counts = [0u32; 4];
        for epoch in 0..8000 {
            let p = epoch_permutation(4, 9, epoch);
            counts[p.iter().position(|&v| v == 0).unwrap()] += 1;
        }
        for c in counts {
            assert!((1_850..=2_150).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn batches_straddle_epochs_in_order() {
        // 5 images, batches of 3: batch 1 holds positions 3, 4 (epoch 0) and 5 (epoch 1).
        let e0 = epoch_permutation(5, 1, 0);
        let e1 = epoch_permutation(5, 1, 1);
        let got = batch_indices(5, 1, 1, 3);
        assert_eq!(got, [e0[3] as usize, e0[4] as usize, e1[0] as usize]);
    }
}
