//! The GPU implementation of [`Backend`]: activations in one planned device arena, parameters
//! and their gradients in two device buffers laid out like [`ParamArena`], every op a launch of
//! our kernels (and cuBLAS for the matrix products).
//!
//! The arena is sized by running the same pass on the [`Planner`] first, so a training or
//! sampling step only bumps an offset: no device allocation ever happens inside a step. The
//! trait's ops cannot return errors (the CPU cannot fail), so the first CUDA error of a pass is
//! kept, later launches are skipped, and the caller collects it with [`GpuBackend::finish`].
//!
//! Precision ([`Precision`], docs/mixed-precision.md): every activation buffer of the arena (and its
//! gradient) is stored as the backend's `dt` — fp32, bf16 or fp16 — and every kernel computes in
//! fp32. Group-norm statistics stay fp32 ([`Backend::alloc_stats`]); parameters have fp32
//! master values and gradients, and the GEMMs read a copy of the weights in `dt`.

use std::rc::Rc;

use super::device::{DevPtr, DeviceMemory, Gpu};
use super::ops;
use super::{CudaError, CudaErrorKind, CudaResult};
use crate::backend::plan::Planner;
use crate::backend::{arena_bytes, Backend};
use crate::ops::attention::AttentionShape;
use crate::ops::conv2d::Conv2dShape;
use crate::ops::dropout::DropoutArgs;
use crate::ops::embedding::TimestepEmbedding;
use crate::ops::groupnorm::GroupNormShape;
use crate::ops::linear::LinearShape;
use crate::params::{ParamArena, ParamId, ParamLayout};
use crate::precision::Precision;
use crate::shape::Nchw;

/// A device buffer of f32 (an arena slice, or a view of a longer-lived buffer).
#[derive(Debug, PartialEq, Eq)]
pub struct DevBuf {
    pub ptr: DevPtr,
    pub len: usize,
}

impl DevBuf {
    /// A view of `len` f32 at `ptr` (the caller keeps the memory alive).
    pub fn view(ptr: DevPtr, len: usize) -> Self {
        Self { ptr, len }
    }

    pub fn of(mem: &DeviceMemory) -> Self {
        Self {
            ptr: mem.ptr(),
            len: mem.bytes() / 4,
        }
    }
}

/// Parameter values and gradients on the device, in the arena's layout: the fp32 master
/// values and gradients, and in bf16/fp16 a copy of the values in that precision, which the
/// GEMMs read (refreshed by [`DeviceParams::refresh_lowp`] and by the fused optimizer pass).
pub struct DeviceParams {
    pub layout: ParamLayout,
    /// The activation precision the parameters serve.
    pub precision: Precision,
    /// (P) f32
    pub values: DeviceMemory,
    /// (P) f32
    pub grads: DeviceMemory,
    /// (P) in `precision`, or `None` in fp32.
    pub lowp: Option<DeviceMemory>,
}

impl DeviceParams {
    /// Uploads `host`'s values; gradients start at zero.
    pub fn upload(gpu: &Gpu, host: &ParamArena<f32>, precision: Precision) -> CudaResult<Self> {
        let len = host.values().len();
        let values = gpu.alloc(len * 4, "parameters")?;
        let grads = gpu.alloc(len * 4, "parameter gradients")?;
        gpu.upload(values.ptr(), host.values(), "parameters")?;
        gpu.zero(grads.ptr(), grads.bytes(), "parameter gradients")?;
        let p = Self {
            layout: host.layout().clone(),
            precision,
            values,
            grads,
            lowp: Self::alloc_lowp(gpu, len, precision)?,
        };
        p.refresh_lowp(gpu)?;
        Ok(p)
    }

    /// Device room for weights only (sampling needs no gradients); values are set later.
    pub fn for_inference(gpu: &Gpu, layout: ParamLayout, precision: Precision) -> CudaResult<Self> {
        let len = layout.arena_len();
        let values = gpu.alloc(len * 4, "parameters")?;
        let grads = gpu.alloc(0, "no gradients")?;
        Ok(Self {
            layout,
            precision,
            values,
            grads,
            lowp: Self::alloc_lowp(gpu, len, precision)?,
        })
    }

    fn alloc_lowp(gpu: &Gpu, len: usize, p: Precision) -> CudaResult<Option<DeviceMemory>> {
        p.is_reduced()
            .then(|| gpu.alloc(len * p.bytes(), "low-precision weights"))
            .transpose()
    }

    pub fn len(&self) -> usize {
        self.layout.arena_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fp32 master value of a parameter (biases, norms and embeddings are read in fp32).
    pub fn value(&self, id: ParamId) -> DevPtr {
        self.values.ptr() + 4 * self.layout.spec(id).range().start as u64
    }

    /// The copy of a weight that matrix products read: in the activation precision.
    pub fn weight(&self, id: ParamId) -> DevPtr {
        match &self.lowp {
            Some(m) => {
                m.ptr() + (self.precision.bytes() * self.layout.spec(id).range().start) as u64
            }
            None => self.value(id),
        }
    }

    pub fn grad(&self, id: ParamId) -> DevPtr {
        self.grads.ptr() + 4 * self.layout.spec(id).range().start as u64
    }

    /// The low-precision copy's pointer, or 0 in fp32 (the fused optimizer pass's `lowp`).
    pub fn lowp_ptr(&self) -> DevPtr {
        self.lowp.as_ref().map_or(0, |m| m.ptr())
    }

    /// Rounds the master values into the low-precision copy (no-op in fp32).
    pub fn refresh_lowp(&self, gpu: &Gpu) -> CudaResult<()> {
        match &self.lowp {
            Some(m) => ops::elementwise::cast_from_f32(
                gpu,
                self.precision,
                self.len(),
                self.values.ptr(),
                m.ptr(),
            ),
            None => Ok(()),
        }
    }

    /// Overwrites the values with `host` (same layout).
    pub fn set_values(&self, gpu: &Gpu, host: &[f32]) -> CudaResult<()> {
        assert_eq!(host.len(), self.len(), "parameter count");
        gpu.upload(self.values.ptr(), host, "parameters")?;
        self.refresh_lowp(gpu)
    }

    pub fn zero_grads(&self, gpu: &Gpu) -> CudaResult<()> {
        gpu.zero(self.grads.ptr(), self.grads.bytes(), "parameter gradients")
    }

    /// Values and gradients copied back into a host arena.
    pub fn download(&self, gpu: &Gpu) -> CudaResult<ParamArena<f32>> {
        let mut host = ParamArena::zeros(self.layout.clone());
        gpu.download(host.values_mut(), self.values.ptr(), "parameters")?;
        gpu.download(host.grads_mut(), self.grads.ptr(), "parameter gradients")?;
        Ok(host)
    }
}

/// What one planned pass needs on the device, from the [`Planner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub arena_bytes: usize,
    /// f32 elements of the shared op workspace (im2col, group-norm partials, attention dP);
    /// the loss and norm reductions use the trainer's own scratch.
    pub workspace: usize,
    pub max_labels: usize,
    /// Buffers the pass takes from the arena (the emulator's memory checker leaves a guard
    /// after each).
    pub buffers: usize,
}

/// Bytes the emulated backend leaves after each arena buffer, for the memory checker (a
/// multiple of the arena alignment, so buffers stay aligned).
const EMULATOR_ARENA_GUARD: usize = 256;

/// Largest im2col workspace we grow to for batching images into one GEMM (256 MiB).
const MAX_CONV_WORKSPACE: usize = 64 << 20;

impl Sizing {
    /// `plan` from [`crate::nn::UNet::plan_step_stored`] at the backend's precision `dt`. The
    /// workspace is counted in f32 slots whatever the precision (a bf16 im2col chunk then
    /// unrolls twice the images); it covers both convolution paths ([`ConvPath`]), so the path
    /// can be chosen per run without planning again.
    pub fn from_plan(plan: &Planner<f32>, dt: Precision) -> Self {
        let mut ws = 0;
        for g in &plan.convs {
            // As many images per im2col chunk as fit under the cap, at least one.
            let one = ops::conv2d::conv2d_workspace_len(g).max(1);
            let images = (MAX_CONV_WORKSPACE / one).clamp(1, g.input.n);
            ws = ws.max(ops::conv2d::conv2d_workspace_for(g, images));
            if ConvPath::Shifted.takes(g) {
                let chunk = ops::conv_shifted::l2_chunk_images(g, dt);
                ws = ws.max(ops::conv_shifted::workspace_for(g, dt, chunk));
            }
        }
        for g in &plan.norms {
            ws = ws.max(ops::groupnorm::group_norm_scratch_len(g));
        }
        for g in &plan.attentions {
            ws = ws.max(ops::attention::attention_workspace_len(g));
        }
        Self {
            arena_bytes: plan.arena_bytes,
            workspace: ws,
            max_labels: plan.max_labels,
            buffers: plan.buffers,
        }
    }

    /// The largest of two sizings, so one backend can run either pass.
    pub fn max(self, o: Self) -> Self {
        Self {
            arena_bytes: self.arena_bytes.max(o.arena_bytes),
            workspace: self.workspace.max(o.workspace),
            max_labels: self.max_labels.max(o.max_labels),
            buffers: self.buffers.max(o.buffers),
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.arena_bytes + 4 * self.workspace + 4 * self.max_labels
    }
}

/// How 3×3 stride-1 convolutions run: im2col + GEMM (the reference path, which materialises
/// the 9× patch matrix), or nine shifted GEMMs over a zero-padded NHWC copy
/// ([`ops::conv_shifted`], no patch matrix). Every other convolution takes im2col.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    Im2col,
    Shifted,
}

impl ConvPath {
    /// `$DDPM_CONV` (`im2col` or `shifted`), else im2col: the shifted path's speed has not been
    /// measured on a GPU yet (see the README), so it is opt-in until it is.
    pub fn from_env() -> Self {
        match std::env::var("DDPM_CONV").as_deref() {
            Ok("shifted") => ConvPath::Shifted,
            _ => ConvPath::Im2col,
        }
    }

    /// Whether this path runs `g` on shifted GEMMs: 3×3, stride 1, padding 1, and at least 16
    /// input channels (the RGB input conv's K = 3 GEMMs would waste the tensor cores).
    pub fn takes(self, g: &Conv2dShape) -> bool {
        self == ConvPath::Shifted && ops::conv_shifted::applies(g) && g.input.c >= 16
    }
}

/// The GPU backend for one planned pass shape.
pub struct GpuBackend {
    gpu: Rc<Gpu>,
    /// What activations are stored as.
    dt: Precision,
    /// How 3×3 convolutions run.
    conv: ConvPath,
    sizing: Sizing,
    arena: DeviceMemory,
    used: usize,
    /// Buffers taken in this pass.
    taken: usize,
    workspace: DeviceMemory,
    labels: DeviceMemory,
    error: Option<CudaError>,
}

impl GpuBackend {
    /// Allocates the arena and workspace for passes no larger than `sizing` (planned for
    /// activations stored as `dt`).
    pub fn new(gpu: Rc<Gpu>, sizing: Sizing, dt: Precision) -> CudaResult<Self> {
        // Under the emulator each buffer is followed by a guard its neighbours may not write.
        let guards = if gpu.is_emulated() {
            sizing.buffers * EMULATOR_ARENA_GUARD
        } else {
            0
        };
        let arena = gpu.alloc(sizing.arena_bytes + guards, "the activation arena")?;
        let workspace = gpu.alloc(sizing.workspace * 4, "the op workspace")?;
        let labels = gpu.alloc(sizing.max_labels * 4, "class labels")?;
        Ok(Self {
            gpu,
            dt,
            conv: ConvPath::from_env(),
            sizing,
            arena,
            used: 0,
            taken: 0,
            workspace,
            labels,
            error: None,
        })
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }

    pub fn sizing(&self) -> Sizing {
        self.sizing
    }

    /// The activation precision.
    pub fn precision(&self) -> Precision {
        self.dt
    }

    /// Chooses the path of 3×3 convolutions (the workspace was planned for both).
    pub fn set_conv_path(&mut self, path: ConvPath) {
        self.conv = path;
    }

    /// Starts a new pass: every arena buffer of the previous one is dead.
    pub fn reset(&mut self) {
        self.used = 0;
        self.taken = 0;
        self.gpu.clear_sub_buffers(self.arena.ptr());
    }

    /// The first error of the pass, if any (and clears it).
    pub fn finish(&mut self) -> CudaResult<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Bytes of the arena the current pass has taken.
    pub fn arena_used(&self) -> usize {
        self.used
    }

    fn record(&mut self, r: CudaResult<()>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e);
        }
    }

    /// Runs `f` unless an earlier op of this pass failed.
    fn run(&mut self, f: impl FnOnce(&Gpu, Precision, DevPtr, usize) -> CudaResult<()>) {
        if self.error.is_none() {
            let r = f(
                &self.gpu,
                self.dt,
                self.workspace.ptr(),
                self.sizing.workspace,
            );
            self.record(r);
        }
    }

    fn take(&mut self, len: usize) -> DevBuf {
        self.take_elems(len, self.dt.bytes())
    }

    fn take_elems(&mut self, len: usize, elem: usize) -> DevBuf {
        let bytes = arena_bytes(len, elem);
        if self.used + bytes > self.arena.bytes() {
            self.record(Err(CudaError::new(
                CudaErrorKind::Driver,
                "activation arena",
                format!(
                    "a pass asked for more than the {} planned bytes (a buffer of {len} values at offset {}): the plan and the pass disagree",
                    self.arena.bytes(),
                    self.used
                ),
            )));
            return DevBuf { ptr: 0, len };
        }
        let ptr = self.arena.ptr() + self.used as u64;
        self.used += bytes;
        if self.gpu.is_emulated() {
            // The rounding up to the arena's alignment and a guard after each buffer: the
            // memory checker reports a kernel that writes there, naming the buffer.
            let guard = EMULATOR_ARENA_GUARD.min(self.arena.bytes() - self.used);
            let (exact, taken) = (len * elem, self.taken);
            self.gpu.register_sub_buffer(
                self.arena.ptr(),
                ptr,
                (exact, bytes - exact + guard),
                || format!("arena buffer #{taken} of the pass ({len} values of {elem} bytes)"),
            );
            self.used += guard;
        }
        self.taken += 1;
        DevBuf { ptr, len }
    }

    fn upload_labels(&mut self, labels: &[u32]) -> DevPtr {
        if labels.len() > self.sizing.max_labels {
            self.record(Err(CudaError::new(
                CudaErrorKind::Driver,
                "class labels",
                format!(
                    "{} labels but {} were planned",
                    labels.len(),
                    self.sizing.max_labels
                ),
            )));
            return 0;
        }
        let ptr = self.labels.ptr();
        let r = self.gpu.upload(ptr, labels, "class labels");
        self.record(r);
        ptr
    }
}

impl Backend for GpuBackend {
    type T = f32;
    type Buf = DevBuf;
    type Params = DeviceParams;

    fn alloc(&mut self, len: usize) -> DevBuf {
        self.take(len)
    }

    fn zeros(&mut self, len: usize) -> DevBuf {
        let b = self.take(len);
        let bytes = len * self.dt.bytes();
        self.run(|gpu, _, _, _| gpu.zero(b.ptr, bytes, "zeroed buffer"));
        b
    }

    fn alloc_stats(&mut self, len: usize) -> DevBuf {
        self.take_elems(len, 4)
    }

    fn len(buf: &DevBuf) -> usize {
        buf.len
    }

    fn copy(&mut self, x: &DevBuf) -> DevBuf {
        let y = self.take(x.len);
        let bytes = x.len * self.dt.bytes();
        self.run(|gpu, _, _, _| gpu.copy(y.ptr, x.ptr, bytes, "buffer copy"));
        y
    }

    fn accumulate(&mut self, acc: &mut DevBuf, x: &DevBuf) {
        self.run(|gpu, dt, _, _| ops::elementwise::accumulate(gpu, dt, acc.len, acc.ptr, x.ptr));
    }

    fn conv2d_forward(
        &mut self,
        p: &DeviceParams,
        g: &Conv2dShape,
        x: &DevBuf,
        w: ParamId,
        b: ParamId,
        y: &mut DevBuf,
    ) {
        let shifted = self.conv.takes(g);
        self.run(|gpu, dt, ws, ws_len| {
            let f = match shifted {
                true => ops::conv_shifted::conv3x3_forward,
                false => ops::conv2d::conv2d_forward,
            };
            f(
                gpu,
                dt,
                g,
                x.ptr,
                p.weight(w),
                Some(p.value(b)),
                y.ptr,
                ws,
                ws_len,
            )
        });
    }

    fn conv2d_backward(
        &mut self,
        p: &mut DeviceParams,
        g: &Conv2dShape,
        x: &DevBuf,
        w: ParamId,
        b: ParamId,
        dy: &DevBuf,
        dx: Option<&mut DevBuf>,
    ) {
        let dx = dx.map(|d| d.ptr);
        let shifted = self.conv.takes(g);
        self.run(|gpu, dt, ws, ws_len| {
            let f = match shifted {
                true => ops::conv_shifted::conv3x3_backward,
                false => ops::conv2d::conv2d_backward,
            };
            f(
                gpu,
                dt,
                g,
                x.ptr,
                p.weight(w),
                dy.ptr,
                dx,
                p.grad(w),
                Some(p.grad(b)),
                ws,
                ws_len,
            )
        });
    }

    fn linear_forward(
        &mut self,
        p: &DeviceParams,
        s: &LinearShape,
        x: &DevBuf,
        w: ParamId,
        b: ParamId,
        y: &mut DevBuf,
    ) {
        self.run(|gpu, dt, _, _| {
            ops::linear::linear_forward(gpu, dt, s, x.ptr, p.weight(w), Some(p.value(b)), y.ptr)
        });
    }

    fn linear_backward(
        &mut self,
        p: &mut DeviceParams,
        s: &LinearShape,
        x: &DevBuf,
        w: ParamId,
        b: ParamId,
        dy: &DevBuf,
        dx: Option<&mut DevBuf>,
    ) {
        let dx = dx.map(|d| d.ptr);
        self.run(|gpu, dt, _, _| {
            ops::linear::linear_backward(
                gpu,
                dt,
                s,
                x.ptr,
                p.weight(w),
                dy.ptr,
                dx,
                p.grad(w),
                Some(p.grad(b)),
            )
        });
    }

    fn group_norm_forward(
        &mut self,
        p: &DeviceParams,
        g: &GroupNormShape,
        x: &DevBuf,
        gamma: ParamId,
        beta: ParamId,
        y: &mut DevBuf,
        mean: &mut DevBuf,
        rstd: &mut DevBuf,
    ) {
        self.run(|gpu, dt, ws, _| {
            ops::groupnorm::group_norm_forward(
                gpu,
                dt,
                g,
                x.ptr,
                p.value(gamma),
                p.value(beta),
                y.ptr,
                mean.ptr,
                rstd.ptr,
                ws,
            )
        });
    }

    fn group_norm_backward(
        &mut self,
        p: &mut DeviceParams,
        g: &GroupNormShape,
        x: &DevBuf,
        gamma: ParamId,
        beta: ParamId,
        mean: &DevBuf,
        rstd: &DevBuf,
        dy: &DevBuf,
        dx: &mut DevBuf,
    ) {
        self.run(|gpu, dt, ws, _| {
            ops::groupnorm::group_norm_backward(
                gpu,
                dt,
                g,
                x.ptr,
                p.value(gamma),
                mean.ptr,
                rstd.ptr,
                dy.ptr,
                dx.ptr,
                p.grad(gamma),
                p.grad(beta),
                ws,
            )
        });
    }

    fn group_norm_silu_forward(
        &mut self,
        p: &DeviceParams,
        g: &GroupNormShape,
        x: &DevBuf,
        gamma: ParamId,
        beta: ParamId,
        a: &mut DevBuf,
        mean: &mut DevBuf,
        rstd: &mut DevBuf,
    ) {
        self.run(|gpu, dt, ws, _| {
            ops::groupnorm::group_norm_silu_forward(
                gpu,
                dt,
                g,
                x.ptr,
                p.value(gamma),
                p.value(beta),
                a.ptr,
                mean.ptr,
                rstd.ptr,
                ws,
            )
        });
    }

    fn group_norm_silu_backward(
        &mut self,
        p: &mut DeviceParams,
        g: &GroupNormShape,
        x: &DevBuf,
        gamma: ParamId,
        beta: ParamId,
        mean: &DevBuf,
        rstd: &DevBuf,
        da: &DevBuf,
        dx: &mut DevBuf,
    ) {
        self.run(|gpu, dt, ws, _| {
            ops::groupnorm::group_norm_silu_backward(
                gpu,
                dt,
                g,
                x.ptr,
                p.value(gamma),
                p.value(beta),
                mean.ptr,
                rstd.ptr,
                da.ptr,
                dx.ptr,
                p.grad(gamma),
                p.grad(beta),
                ws,
            )
        });
    }

    fn class_embedding_forward(
        &mut self,
        p: &DeviceParams,
        table: ParamId,
        labels: &[u32],
        emb: &mut DevBuf,
    ) {
        let l = self.upload_labels(labels);
        let n = labels.len();
        let width = emb.len / n.max(1);
        self.run(|gpu, dt, _, _| {
            ops::embedding::class_embedding_forward(gpu, dt, n, width, l, p.value(table), emb.ptr)
        });
    }

    fn class_embedding_backward(
        &mut self,
        p: &mut DeviceParams,
        table: ParamId,
        labels: &[u32],
        demb: &DevBuf,
    ) {
        let l = self.upload_labels(labels);
        let n = labels.len();
        let width = demb.len / n.max(1);
        let classes = p.layout.spec(table).len() / width.max(1);
        self.run(|gpu, dt, _, _| {
            ops::embedding::class_embedding_backward(
                gpu,
                dt,
                n,
                classes,
                width,
                l,
                demb.ptr,
                p.grad(table),
            )
        });
    }

    fn silu_forward(&mut self, x: &DevBuf, y: &mut DevBuf) {
        self.run(|gpu, dt, _, _| ops::elementwise::silu_forward(gpu, dt, x.len, x.ptr, y.ptr));
    }

    fn silu_backward(&mut self, x: &DevBuf, dy: &DevBuf, dx: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::silu_backward(gpu, dt, x.len, x.ptr, dy.ptr, dx.ptr)
        });
    }

    fn add_channel_bias(&mut self, shape: Nchw, x: &DevBuf, t: &DevBuf, y: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::add_channel_bias(gpu, dt, shape, x.ptr, t.ptr, y.ptr)
        });
    }

    fn sum_spatial(&mut self, shape: Nchw, dy: &DevBuf, dsum: &mut DevBuf) {
        self.run(|gpu, dt, _, _| ops::elementwise::sum_spatial(gpu, dt, shape, dy.ptr, dsum.ptr));
    }

    fn dropout_forward(&mut self, a: &DropoutArgs, x: &DevBuf, y: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::dropout_forward(gpu, dt, x.len, a, x.ptr, y.ptr)
        });
    }

    fn dropout_backward(&mut self, a: &DropoutArgs, dy: &DevBuf, dx: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::dropout_backward(gpu, dt, dy.len, a, dy.ptr, dx.ptr)
        });
    }

    fn concat_channels(
        &mut self,
        out: Nchw,
        a: &DevBuf,
        c_a: usize,
        b: &DevBuf,
        c_b: usize,
        y: &mut DevBuf,
    ) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::concat_channels(gpu, dt, out, a.ptr, c_a, b.ptr, c_b, y.ptr)
        });
    }

    fn split_channels(
        &mut self,
        out: Nchw,
        dy: &DevBuf,
        da: &mut DevBuf,
        c_a: usize,
        db: &mut DevBuf,
        c_b: usize,
    ) {
        self.run(|gpu, dt, _, _| {
            ops::elementwise::split_channels(gpu, dt, out, dy.ptr, da.ptr, c_a, db.ptr, c_b)
        });
    }

    fn upsample_nearest2x_forward(&mut self, xs: Nchw, x: &DevBuf, y: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::resample::upsample_nearest2x_forward(gpu, dt, xs, x.ptr, y.ptr)
        });
    }

    fn upsample_nearest2x_backward(&mut self, xs: Nchw, dy: &DevBuf, dx: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::resample::upsample_nearest2x_backward(gpu, dt, xs, dy.ptr, dx.ptr)
        });
    }

    fn nchw_to_tokens(&mut self, shape: Nchw, x: &DevBuf, tokens: &mut DevBuf) {
        self.run(|gpu, dt, _, _| ops::attention::nchw_to_tokens(gpu, dt, shape, x.ptr, tokens.ptr));
    }

    fn tokens_to_nchw(&mut self, shape: Nchw, tokens: &DevBuf, x: &mut DevBuf) {
        self.run(|gpu, dt, _, _| ops::attention::tokens_to_nchw(gpu, dt, shape, tokens.ptr, x.ptr));
    }

    fn attention_forward(
        &mut self,
        g: &AttentionShape,
        q: &DevBuf,
        k: &DevBuf,
        v: &DevBuf,
        out: &mut DevBuf,
        probs: &mut DevBuf,
    ) {
        self.run(|gpu, dt, _, _| {
            ops::attention::attention_forward(gpu, dt, g, q.ptr, k.ptr, v.ptr, out.ptr, probs.ptr)
        });
    }

    fn attention_backward(
        &mut self,
        g: &AttentionShape,
        q: &DevBuf,
        k: &DevBuf,
        v: &DevBuf,
        probs: &DevBuf,
        dout: &DevBuf,
        dq: &mut DevBuf,
        dk: &mut DevBuf,
        dv: &mut DevBuf,
    ) {
        self.run(|gpu, dt, ws, _| {
            ops::attention::attention_backward(
                gpu, dt, g, q.ptr, k.ptr, v.ptr, probs.ptr, dout.ptr, dq.ptr, dk.ptr, dv.ptr, ws,
            )
        });
    }

    fn timestep_embedding(&mut self, e: &TimestepEmbedding, t: &DevBuf, emb: &mut DevBuf) {
        self.run(|gpu, dt, _, _| {
            ops::embedding::timestep_embedding(gpu, dt, e, t.len, t.ptr, emb.ptr)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{UNet, UNetConfig};

    /// The planned device memory of a training step and of a sampling step, for the presets at
    /// the batch sizes the benchmarks use; a training step keeps its activations for the
    /// backward, so it needs more than inference at the same batch.
    #[test]
    fn presets_plan_device_memory_that_fits_an_h100() {
        for (preset, batch) in [("tiny", 32), ("ddpm-cifar10", 128)] {
            let net = UNet::new(UNetConfig::preset(preset).unwrap()).unwrap();
            let bf16 = Precision::Bf16.bytes();
            let train = Sizing::from_plan(
                &net.plan_step_stored::<f32>(batch, true, bf16).unwrap(),
                Precision::Bf16,
            );
            let infer = Sizing::from_plan(
                &net.plan_step_stored::<f32>(batch, false, bf16).unwrap(),
                Precision::Bf16,
            );
            let fp32 =
                Sizing::from_plan(&net.plan_step::<f32>(batch, true).unwrap(), Precision::Fp32);
            // Stored in 2 bytes, the activations take about half the arena (the statistics
            // stay fp32).
            assert!(
                train.arena_bytes < fp32.arena_bytes * 11 / 20,
                "{preset}: bf16 arena {} vs fp32 {}",
                train.arena_bytes,
                fp32.arena_bytes
            );
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            eprintln!(
                "{preset} batch {batch}: training {:.2} GiB (arena {:.2}, workspace {:.2}), inference {:.2} GiB",
                gib(train.total_bytes()),
                gib(train.arena_bytes),
                gib(4 * train.workspace),
                gib(infer.total_bytes())
            );
            assert!(train.arena_bytes > infer.arena_bytes);
            assert!(infer.arena_bytes > 0 && train.workspace > 0);
            assert!(
                gib(train.total_bytes()) < 70.0,
                "{preset} does not fit an 80 GB GPU"
            );
        }
    }
}
