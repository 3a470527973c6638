//! A backend that computes nothing: it runs a pass of the network only to add up the buffers the
//! pass allocates and to list the op geometries, so a device backend can allocate everything once,
//! before the first step, and never inside one.

use super::{arena_bytes, Backend};
use crate::float::Real;
use crate::ops::attention::AttentionShape;
use crate::ops::conv2d::Conv2dShape;
use crate::ops::dropout::DropoutArgs;
use crate::ops::embedding::TimestepEmbedding;
use crate::ops::groupnorm::GroupNormShape;
use crate::ops::linear::LinearShape;
use crate::params::ParamId;
use crate::shape::Nchw;
use std::marker::PhantomData;

/// What one pass needs. `T` is the element type the planned backend will store.
#[derive(Clone, Debug, Default)]
pub struct Planner<T> {
    /// Bytes of all buffers the pass allocates, each rounded up to the arena alignment.
    pub arena_bytes: usize,
    /// Number of buffers allocated.
    pub buffers: usize,
    /// Every convolution the pass runs (forward or backward), without duplicates.
    pub convs: Vec<Conv2dShape>,
    /// Every attention the pass runs, without duplicates.
    pub attentions: Vec<AttentionShape>,
    /// Every group norm the pass runs, without duplicates.
    pub norms: Vec<GroupNormShape>,
    /// The most class labels one op reads.
    pub max_labels: usize,
    /// Bytes of one stored activation (`T`'s unless planned for a reduced precision).
    pub storage_bytes: usize,
    _t: PhantomData<T>,
}

/// A planned buffer: only its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned(pub usize);

impl<T: Real> Planner<T> {
    pub fn new() -> Self {
        Self {
            arena_bytes: 0,
            buffers: 0,
            convs: Vec::new(),
            attentions: Vec::new(),
            norms: Vec::new(),
            max_labels: 0,
            storage_bytes: std::mem::size_of::<T>(),
            _t: PhantomData,
        }
    }

    /// A planner for a device that stores activations in `storage_bytes`-byte elements (2 for
    /// bf16/fp16) and statistics as `T`.
    pub fn with_storage(storage_bytes: usize) -> Self {
        Self {
            storage_bytes,
            ..Self::new()
        }
    }

    fn take_bytes(&mut self, len: usize, elem: usize) -> Planned {
        self.arena_bytes += arena_bytes(len, elem);
        self.buffers += 1;
        Planned(len)
    }

    fn take(&mut self, len: usize) -> Planned {
        self.take_bytes(len, self.storage_bytes)
    }

    fn norm(&mut self, g: &GroupNormShape) {
        if !self.norms.contains(g) {
            self.norms.push(*g);
        }
    }

    fn conv(&mut self, g: &Conv2dShape) {
        if !self.convs.contains(g) {
            self.convs.push(*g);
        }
    }
}

impl<T: Real> Backend for Planner<T> {
    type T = T;
    type Buf = Planned;
    type Params = ();

    fn alloc(&mut self, len: usize) -> Planned {
        self.take(len)
    }
    fn zeros(&mut self, len: usize) -> Planned {
        self.take(len)
    }
    fn alloc_stats(&mut self, len: usize) -> Planned {
        self.take_bytes(len, std::mem::size_of::<T>())
    }
    fn len(buf: &Planned) -> usize {
        buf.0
    }
    fn copy(&mut self, x: &Planned) -> Planned {
        self.take(x.0)
    }
    fn accumulate(&mut self, _: &mut Planned, _: &Planned) {}

    fn conv2d_forward(
        &mut self,
        _: &(),
        g: &Conv2dShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &mut Planned,
    ) {
        self.conv(g);
    }
    fn conv2d_backward(
        &mut self,
        _: &mut (),
        g: &Conv2dShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &Planned,
        _: Option<&mut Planned>,
    ) {
        self.conv(g);
    }
    fn linear_forward(
        &mut self,
        _: &(),
        _: &LinearShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &mut Planned,
    ) {
    }
    fn linear_backward(
        &mut self,
        _: &mut (),
        _: &LinearShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &Planned,
        _: Option<&mut Planned>,
    ) {
    }
    fn group_norm_forward(
        &mut self,
        _: &(),
        g: &GroupNormShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &mut Planned,
        _: &mut Planned,
        _: &mut Planned,
    ) {
        self.norm(g);
    }
    fn group_norm_backward(
        &mut self,
        _: &mut (),
        g: &GroupNormShape,
        _: &Planned,
        _: ParamId,
        _: ParamId,
        _: &Planned,
        _: &Planned,
        _: &Planned,
        _: &mut Planned,
    ) {
        self.norm(g);
    }
    fn class_embedding_forward(&mut self, _: &(), _: ParamId, labels: &[u32], _: &mut Planned) {
        self.max_labels = self.max_labels.max(labels.len());
    }
    fn class_embedding_backward(&mut self, _: &mut (), _: ParamId, labels: &[u32], _: &Planned) {
        self.max_labels = self.max_labels.max(labels.len());
    }
    fn silu_forward(&mut self, _: &Planned, _: &mut Planned) {}
    fn silu_backward(&mut self, _: &Planned, _: &Planned, _: &mut Planned) {}
    fn add_channel_bias(&mut self, _: Nchw, _: &Planned, _: &Planned, _: &mut Planned) {}
    fn sum_spatial(&mut self, _: Nchw, _: &Planned, _: &mut Planned) {}
    fn dropout_forward(&mut self, _: &DropoutArgs, _: &Planned, _: &mut Planned) {}
    fn dropout_backward(&mut self, _: &DropoutArgs, _: &Planned, _: &mut Planned) {}
    fn concat_channels(
        &mut self,
        _: Nchw,
        _: &Planned,
        _: usize,
        _: &Planned,
        _: usize,
        _: &mut Planned,
    ) {
    }
    fn split_channels(
        &mut self,
        _: Nchw,
        _: &Planned,
        _: &mut Planned,
        _: usize,
        _: &mut Planned,
        _: usize,
    ) {
    }
    fn upsample_nearest2x_forward(&mut self, _: Nchw, _: &Planned, _: &mut Planned) {}
    fn upsample_nearest2x_backward(&mut self, _: Nchw, _: &Planned, _: &mut Planned) {}
    fn nchw_to_tokens(&mut self, _: Nchw, _: &Planned, _: &mut Planned) {}
    fn tokens_to_nchw(&mut self, _: Nchw, _: &Planned, _: &mut Planned) {}
    fn attention_forward(
        &mut self,
        g: &AttentionShape,
        _: &Planned,
        _: &Planned,
        _: &Planned,
        _: &mut Planned,
        _: &mut Planned,
    ) {
        if !self.attentions.contains(g) {
            self.attentions.push(*g);
        }
    }
    fn attention_backward(
        &mut self,
        g: &AttentionShape,
        _: &Planned,
        _: &Planned,
        _: &Planned,
        _: &Planned,
        _: &Planned,
        _: &mut Planned,
        _: &mut Planned,
        _: &mut Planned,
    ) {
        if !self.attentions.contains(g) {
            self.attentions.push(*g);
        }
    }
    fn timestep_embedding(&mut self, _: &TimestepEmbedding, _: &Planned, _: &mut Planned) {}
}
