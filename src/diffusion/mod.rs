//! Noise schedules, the forward process and samplers (in progress).
