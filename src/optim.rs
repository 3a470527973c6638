//! AdamW, gradient clipping and EMA (in progress).
