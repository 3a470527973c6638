//! Dynamic loss scaling for fp16 training (Micikevicius et al., "Mixed Precision Training",
//! ICLR 2018, §3.2): the loss gradient is multiplied by S before the backward so that small
//! activation gradients stay above fp16's smallest normal (6·10⁻⁵); the parameter gradients,
//! which are fp32, are divided by S again inside the optimizer pass. S starts large; a step whose
//! scaled gradients overflowed (a non-finite norm) is skipped and S halves; after
//! `growth_interval` good steps in a row S doubles. bf16 has fp32's exponent range and needs none.

/// The scale and its schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    /// Good steps since the last overflow or growth.
    good_steps: u32,
    pub growth_interval: u32,
}

/// What one step did to the scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleEvent {
    /// Finite gradients: the update was applied.
    Kept,
    /// Finite gradients, and `growth_interval` of them in a row: the scale doubled.
    Grew,
    /// The scaled gradients overflowed: skip the update; the scale halved.
    BackedOff,
}

impl LossScaler {
    /// 2¹⁶, as PyTorch's `GradScaler` starts.
    pub const INITIAL: f32 = 65_536.0;
    /// Never above 2²⁴ (a larger scale overflows fp16 at once) nor below 1 (below 1 an overflow
    /// is not the scale's fault: the caller treats it as a genuinely non-finite step).
    pub const MAX: f32 = 16_777_216.0;
    pub const MIN: f32 = 1.0;

    pub fn new() -> Self {
        Self::with(Self::INITIAL, 2000)
    }

    pub fn with(scale: f32, growth_interval: u32) -> Self {
        Self {
            scale: scale.clamp(Self::MIN, Self::MAX),
            good_steps: 0,
            growth_interval: growth_interval.max(1),
        }
    }

    /// S, by which the loss gradient is multiplied this step.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Whether a non-finite gradient at the current scale can be blamed on the scale (and so
    /// retried at a smaller one) rather than on the model.
    pub fn can_back_off(&self) -> bool {
        self.scale > Self::MIN
    }

    /// Records one step whose scaled gradient norm was `finite` or not.
    pub fn update(&mut self, finite: bool) -> ScaleEvent {
        if !finite {
            self.scale = (self.scale * 0.5).max(Self::MIN);
            self.good_steps = 0;
            return ScaleEvent::BackedOff;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.good_steps = 0;
            if self.scale < Self::MAX {
                self.scale = (self.scale * 2.0).min(Self::MAX);
                return ScaleEvent::Grew;
            }
        }
        ScaleEvent::Kept
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_a_run_of_good_steps_doubles() {
        let mut s = LossScaler::with(1024.0, 3);
        assert_eq!(s.update(true), ScaleEvent::Kept);
        assert_eq!(s.update(false), ScaleEvent::BackedOff);
        assert_eq!(s.scale(), 512.0);
        // The count restarts after an overflow: three more good steps to grow.
        assert_eq!(s.update(true), ScaleEvent::Kept);
        assert_eq!(s.update(true), ScaleEvent::Kept);
        assert_eq!(s.scale(), 512.0);
        assert_eq!(s.update(true), ScaleEvent::Grew);
        assert_eq!(s.scale(), 1024.0);
    }

    #[test]
    fn the_scale_stays_within_its_bounds() {
        let mut s = LossScaler::with(2.0, 1);
        assert!(s.can_back_off());
        s.update(false);
        assert_eq!(s.scale(), 1.0);
        assert!(!s.can_back_off());
        s.update(false);
        assert_eq!(s.scale(), LossScaler::MIN);
        let mut s = LossScaler::with(LossScaler::MAX, 1);
        assert_eq!(s.update(true), ScaleEvent::Kept);
        assert_eq!(s.scale(), LossScaler::MAX);
        assert_eq!(LossScaler::with(1e30, 5).scale(), LossScaler::MAX);
    }
}
