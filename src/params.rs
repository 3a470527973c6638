//! All parameters in one contiguous arena with named views.
//!
//! The names are diffusers-style keys (`down_blocks.0.resnets.0.conv1.weight`); gradients live in
//! a second arena of the same layout, and so will Adam moments, master weights and EMA. That
//! makes the optimizer, EMA, gradient norm, casts and checkpoint I/O one pass over one array.
//! Each view starts on a multiple of [`ALIGN`] elements so GPU kernels can use vector loads.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use crate::atomic_file::write_atomic;
use crate::float::Real;

/// View alignment in elements (128 bytes of f32).
pub const ALIGN: usize = 32;

/// Handle to one named view; cheap to copy, valid for the layout that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Start of the view in the arena.
    pub offset: usize,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("parameter `{0}` is declared twice")]
    Duplicate(String),
    #[error("parameter `{name}` has shape {shape:?}; every dimension must be positive")]
    EmptyShape { name: String, shape: Vec<usize> },
    #[error("no parameter named `{0}`")]
    Unknown(String),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

impl ParamError {
    fn file(path: &Path, msg: impl Into<String>) -> Self {
        Self::File {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }
}

/// The names, shapes and offsets of all parameters, in declaration order.
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    by_name: HashMap<String, usize>,
    len: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a view; names must be unique and shapes non-empty.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize]) -> Result<ParamId, ParamError> {
        let name = name.into();
        if shape.is_empty() || shape.contains(&0) {
            return Err(ParamError::EmptyShape {
                name,
                shape: shape.to_vec(),
            });
        }
        if self.by_name.contains_key(&name) {
            return Err(ParamError::Duplicate(name));
        }
        let offset = self.len.next_multiple_of(ALIGN);
        let spec = ParamSpec {
            name: name.clone(),
            shape: shape.to_vec(),
            offset,
        };
        self.len = offset + spec.len();
        self.by_name.insert(name, self.specs.len());
        self.specs.push(spec);
        Ok(ParamId(self.specs.len() - 1))
    }

    pub fn id(&self, name: &str) -> Result<ParamId, ParamError> {
        self.by_name
            .get(name)
            .map(|&i| ParamId(i))
            .ok_or_else(|| ParamError::Unknown(name.to_string()))
    }

    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Arena length in elements, alignment gaps included.
    pub fn arena_len(&self) -> usize {
        self.len
    }

    /// Number of trainable scalars (gaps excluded).
    pub fn num_params(&self) -> usize {
        self.specs.iter().map(ParamSpec::len).sum()
    }
}

/// Parameter values and their gradients, two arenas with one layout. Gaps stay zero.
#[derive(Clone, Debug)]
pub struct ParamArena<T> {
    layout: ParamLayout,
    values: Vec<T>,
    grads: Vec<T>,
}

impl<T: Real> ParamArena<T> {
    /// All values and gradients zero.
    pub fn zeros(layout: ParamLayout) -> Self {
        let n = layout.arena_len();
        Self {
            layout,
            values: vec![T::zero(); n],
            grads: vec![T::zero(); n],
        }
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The whole value arena (for one-pass optimizers and casts).
    pub fn values(&self) -> &[T] {
        &self.values
    }
    pub fn values_mut(&mut self) -> &mut [T] {
        &mut self.values
    }
    pub fn grads(&self) -> &[T] {
        &self.grads
    }
    pub fn grads_mut(&mut self) -> &mut [T] {
        &mut self.grads
    }

    pub fn value(&self, id: ParamId) -> &[T] {
        &self.values[self.layout.spec(id).range()]
    }
    pub fn value_mut(&mut self, id: ParamId) -> &mut [T] {
        let r = self.layout.spec(id).range();
        &mut self.values[r]
    }
    pub fn grad(&self, id: ParamId) -> &[T] {
        &self.grads[self.layout.spec(id).range()]
    }
    pub fn grad_mut(&mut self, id: ParamId) -> &mut [T] {
        let r = self.layout.spec(id).range();
        &mut self.grads[r]
    }

    /// All values (writable) beside all gradients (read-only): what an optimizer step needs.
    pub fn values_mut_and_grads(&mut self) -> (&mut [T], &[T]) {
        (&mut self.values, &self.grads)
    }

    /// Read access to all values together with write access to several gradients at once,
    /// which a layer's backward needs (e.g. `dW` and `db`). Ids must be distinct.
    pub fn values_and_grads<const N: usize>(&mut self, ids: [ParamId; N]) -> (&[T], [&mut [T]; N]) {
        let ranges = ids.map(|id| self.layout.spec(id).range());
        let grads = self
            .grads
            .get_disjoint_mut(ranges)
            .expect("values_and_grads: parameter ids must be distinct");
        (&self.values, grads)
    }

    pub fn value_by_name(&self, name: &str) -> Result<&[T], ParamError> {
        Ok(self.value(self.layout.id(name)?))
    }

    pub fn zero_grads(&mut self) {
        self.grads.fill(T::zero());
    }

    /// Writes the values as a safetensors file (one tensor per view, in `T`'s dtype), atomically.
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<(), ParamError> {
        let mut views = BTreeMap::new();
        for spec in self.layout.specs() {
            let bytes: &[u8] = bytemuck::cast_slice(&self.values[spec.range()]);
            let view = safetensors::tensor::TensorView::new(T::DTYPE, spec.shape.clone(), bytes)
                .map_err(|e| ParamError::file(path, format!("tensor `{}`: {e}", spec.name)))?;
            views.insert(spec.name.clone(), view);
        }
        let bytes = safetensors::serialize(views, metadata)
            .map_err(|e| ParamError::file(path, e.to_string()))?;
        write_atomic(path, &bytes).map_err(|e| ParamError::file(path, format!("cannot write: {e}")))
    }

    /// Loads every view from a safetensors file. The file must hold exactly this layout's tensor
    /// names with the same shapes; f32, f64, bf16 and f16 data are converted to `T`. On any error
    /// the arena is left unchanged.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<(), ParamError> {
        let bytes =
            std::fs::read(path).map_err(|e| ParamError::file(path, format!("cannot read: {e}")))?;
        let st = parse_safetensors(&bytes)
            .map_err(|e| ParamError::file(path, format!("not a valid safetensors file: {e}")))?;
        let mut staged = self.values.clone();
        for spec in self.layout.specs() {
            let t = st
                .tensor(&spec.name)
                .map_err(|_| ParamError::file(path, format!("missing tensor `{}`", spec.name)))?;
            if t.shape() != spec.shape.as_slice() {
                return Err(ParamError::file(
                    path,
                    format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        spec.name,
                        t.shape(),
                        spec.shape
                    ),
                ));
            }
            decode_into(t.dtype(), t.data(), &mut staged[spec.range()])
                .map_err(|msg| ParamError::file(path, format!("tensor `{}`: {msg}", spec.name)))?;
        }
        let mut extra: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| self.layout.id(n).is_err())
            .collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            let shown: Vec<String> = extra.iter().take(5).map(|n| format!("`{n}`")).collect();
            let more = if extra.len() > 5 {
                format!(" and {} more", extra.len() - 5)
            } else {
                String::new()
            };
            return Err(ParamError::file(
                path,
                format!(
                    "unexpected tensor(s) {}{more}: not parameters of this model",
                    shown.join(", ")
                ),
            ));
        }
        self.values = staged;
        Ok(())
    }
}

/// Parses the bytes of a safetensors file, after [`check_data_offsets`].
pub fn parse_safetensors(bytes: &[u8]) -> Result<safetensors::SafeTensors<'_>, String> {
    check_data_offsets(bytes)?;
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())
}

/// Refuses a safetensors header with a tensor that ends past the end of the file. The
/// `safetensors` crate (0.8) checks the header thoroughly but then adds the tensors' total byte
/// count to the header length unchecked, so tensors declaring 2⁶⁴ bytes between them overflow
/// that sum: a panic where overflow checks are on (as in tests), a wrapped sum otherwise. Call
/// it before `SafeTensors::deserialize` or `read_metadata`; a header it cannot read is left for
/// the crate to refuse.
pub fn check_data_offsets(bytes: &[u8]) -> Result<(), String> {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return Ok(());
    };
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..n.checked_add(8)?));
    let Some(header) = header else {
        return Ok(());
    };
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    for (name, info) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64);
        if let Some(end) = end.filter(|&e| e > data_len) {
            return Err(format!(
                "tensor `{name}` ends at byte {end} of the data, which holds {data_len} bytes"
            ));
        }
    }
    Ok(())
}

/// Safetensors views of a flat array laid out as `layout` (values, EMA, Adam moments…), each
/// tensor named `prefix` + its parameter name. The gaps between views are not written.
pub fn named_views<'a, T: Real>(
    layout: &ParamLayout,
    data: &'a [T],
    prefix: &str,
) -> Vec<(String, safetensors::tensor::TensorView<'a>)> {
    assert_eq!(data.len(), layout.arena_len(), "named_views: arena length");
    layout
        .specs()
        .iter()
        .map(|spec| {
            let bytes: &[u8] = bytemuck::cast_slice(&data[spec.range()]);
            let view = safetensors::tensor::TensorView::new(T::DTYPE, spec.shape.clone(), bytes)
                .expect("a view's byte length matches its shape");
            (format!("{prefix}{}", spec.name), view)
        })
        .collect()
}

/// Fills a flat array laid out as `layout` from the tensors `prefix` + parameter name of `st`,
/// converting float dtypes. The error names the first missing or mis-shaped tensor.
pub fn read_named<T: Real>(
    st: &safetensors::SafeTensors<'_>,
    layout: &ParamLayout,
    prefix: &str,
    out: &mut [T],
) -> Result<(), String> {
    assert_eq!(out.len(), layout.arena_len(), "read_named: arena length");
    for spec in layout.specs() {
        let name = format!("{prefix}{}", spec.name);
        let t = st
            .tensor(&name)
            .map_err(|_| format!("missing tensor `{name}`"))?;
        if t.shape() != spec.shape.as_slice() {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                t.shape(),
                spec.shape
            ));
        }
        decode_into(t.dtype(), t.data(), &mut out[spec.range()])
            .map_err(|msg| format!("tensor `{name}`: {msg}"))?;
    }
    Ok(())
}

/// Converts little-endian tensor bytes of a float dtype into `out`.
pub fn decode_into<T: Real>(
    dtype: safetensors::Dtype,
    data: &[u8],
    out: &mut [T],
) -> Result<(), String> {
    use safetensors::Dtype;
    let width = match dtype {
        Dtype::F64 => 8,
        Dtype::F32 => 4,
        Dtype::BF16 | Dtype::F16 => 2,
        other => {
            return Err(format!(
                "dtype {other:?} is not a float type (expected F32, F64, BF16 or F16)"
            ))
        }
    };
    if data.len() != out.len() * width {
        return Err(format!(
            "{} bytes for {} elements of {dtype:?}",
            data.len(),
            out.len()
        ));
    }
    for (o, b) in out.iter_mut().zip(data.chunks_exact(width)) {
        let v = match dtype {
            Dtype::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            Dtype::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            Dtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            _ => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        };
        *o = T::lit(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        let mut l = ParamLayout::new();
        l.add("conv_in.weight", &[4, 3, 3, 3]).unwrap();
        l.add("conv_in.bias", &[4]).unwrap();
        l.add("down_blocks.0.resnets.0.norm1.weight", &[4]).unwrap();
        l
    }

    #[test]
    fn views_are_aligned_disjoint_and_in_order() {
        let l = layout();
        let mut end = 0;
        for s in l.specs() {
            assert_eq!(s.offset % ALIGN, 0, "{}", s.name);
            assert!(s.offset >= end);
            end = s.offset + s.len();
        }
        assert_eq!(l.arena_len(), end);
        assert_eq!(l.num_params(), 108 + 4 + 4);
        assert!(matches!(
            ParamLayout::new().add("x", &[0]),
            Err(ParamError::EmptyShape { .. })
        ));
        let mut l2 = layout();
        assert!(matches!(
            l2.add("conv_in.bias", &[4]),
            Err(ParamError::Duplicate(_))
        ));
    }

    #[test]
    fn grads_share_the_layout() {
        let mut a = ParamArena::<f32>::zeros(layout());
        let w = a.layout().id("conv_in.weight").unwrap();
        let b = a.layout().id("conv_in.bias").unwrap();
        a.value_mut(b).fill(2.0);
        let bias_range = a.layout().spec(b).range();
        assert_eq!(
            bias_range,
            128..132,
            "bias starts at the next multiple of ALIGN after 108"
        );
        let (vals, [gw, gb]) = a.values_and_grads([w, b]);
        gw.fill(1.0);
        gb.copy_from_slice(&vals[bias_range]);
        assert_eq!(a.grad(b), &[2.0; 4]);
        assert_eq!(a.grads()[..108], [1.0; 108]);
        a.zero_grads();
        assert!(a.grads().iter().all(|&g| g == 0.0));
    }

    #[test]
    fn safetensors_round_trip_and_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ddpm-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.safetensors");
        let mut a = ParamArena::<f32>::zeros(layout());
        for (i, v) in a.values_mut().iter_mut().enumerate() {
            *v = i as f32 * 0.5;
        }
        a.save_safetensors(&path, None).unwrap();
        let mut b = ParamArena::<f64>::zeros(layout());
        b.load_safetensors(&path).unwrap();
        let specs = a.layout().specs().to_vec();
        for s in &specs {
            let want: Vec<f64> = a.values()[s.range()].iter().map(|&v| v as f64).collect();
            assert_eq!(&b.values()[s.range()], want.as_slice(), "{}", s.name);
        }

        // A layout with a mis-shaped and an extra tensor is refused, naming the key.
        let mut other = ParamLayout::new();
        other.add("conv_in.weight", &[4, 3, 3, 3]).unwrap();
        other.add("conv_in.bias", &[5]).unwrap();
        let mut c = ParamArena::<f32>::zeros(other);
        let err = c.load_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("`conv_in.bias` has shape [4], expected [5]"),
            "{err}"
        );
        assert!(
            c.values().iter().all(|&v| v == 0.0),
            "arena changed on a failed load"
        );

        let mut smaller = ParamLayout::new();
        smaller.add("conv_in.weight", &[4, 3, 3, 3]).unwrap();
        let err = ParamArena::<f32>::zeros(smaller)
            .load_safetensors(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "unexpected tensor(s) `conv_in.bias`, `down_blocks.0.resnets.0.norm1.weight`"
            ),
            "{err}"
        );

        let mut bigger = layout();
        bigger.add("conv_out.weight", &[3]).unwrap();
        let err = ParamArena::<f32>::zeros(bigger)
            .load_safetensors(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing tensor `conv_out.weight`"), "{err}");

        std::fs::write(&path, b"garbage").unwrap();
        let err = a.load_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.safetensors") && err.contains("not a valid safetensors file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
