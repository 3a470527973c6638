//! NumPy `.npz` archives of float arrays: reading what `np.savez` / `np.savez_compressed` write
//! (the statistics files of pytorch-fid), and writing archives `np.load` reads.
//!
//! An `.npz` is a zip archive with one `NAME.npy` member per array. A `.npy` is the magic
//! `\x93NUMPY`, a version (1.0, 2.0 or 3.0), the header length (u16 for 1.0, u32 after), a
//! Python dict literal `{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }`
//! padded with spaces and a newline, then the raw values.
//!
//! Reading takes stored and deflated members (what numpy writes), with ZIP64 records (numpy
//! asks for them on every member), and checks each member's CRC-32. Arrays may be f4 or f8 in
//! either byte order and in C or Fortran order; they come back as f64 in C (row-major) order.
//! Writing makes stored (uncompressed) members of little-endian f8 in C order, version 1.0
//! headers padded to 64 bytes as numpy pads them, and fixed timestamps (the same input gives the
//! same bytes).

use std::io::Read;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// One array: its shape and its values in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const END64_LOCATOR: u32 = 0x0706_4b50;
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b
        .get(at..at + 2)
        .ok_or_else(|| anyhow!("truncated zip structure at byte {at}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b
        .get(at..at + 4)
        .ok_or_else(|| anyhow!("truncated zip structure at byte {at}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b
        .get(at..at + 8)
        .ok_or_else(|| anyhow!("truncated zip structure at byte {at}"))?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// A member of the archive, from the central directory.
struct Entry {
    name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

/// The (offset, entry count) of the central directory, from the end records.
fn central_directory(b: &[u8]) -> Result<(usize, usize)> {
    // The end record is 22 bytes plus a comment of at most 65535 bytes.
    let lowest = b.len().saturating_sub(22 + 65535);
    let end = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i).is_ok_and(|s| s == END))
        .ok_or_else(|| anyhow!("not a zip archive (no end of central directory record)"))?;
    let mut count = u64::from(u16_at(b, end + 10)?);
    let mut offset = u64::from(u32_at(b, end + 16)?);
    if (count == 0xFFFF || offset == 0xFFFF_FFFF)
        && end >= 20
        && u32_at(b, end - 20)? == END64_LOCATOR
    {
        let at = usize::try_from(u64_at(b, end - 20 + 8)?)?;
        ensure!(
            u32_at(b, at)? == END64,
            "broken ZIP64 end record at byte {at}"
        );
        count = u64_at(b, at + 32)?;
        offset = u64_at(b, at + 48)?;
    }
    Ok((usize::try_from(offset)?, usize::try_from(count)?))
}

fn entries(b: &[u8]) -> Result<Vec<Entry>> {
    let (mut at, count) = central_directory(b)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        ensure!(
            u32_at(b, at)? == CENTRAL,
            "broken central directory at byte {at}"
        );
        let (name_len, extra_len, comment_len) = (
            usize::from(u16_at(b, at + 28)?),
            usize::from(u16_at(b, at + 30)?),
            usize::from(u16_at(b, at + 32)?),
        );
        let name_at = at + 46;
        let name = b
            .get(name_at..name_at + name_len)
            .ok_or_else(|| anyhow!("truncated member name at byte {name_at}"))?;
        let mut e = Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            flags: u16_at(b, at + 8)?,
            method: u16_at(b, at + 10)?,
            crc: u32_at(b, at + 16)?,
            compressed: u64::from(u32_at(b, at + 20)?),
            size: u64::from(u32_at(b, at + 24)?),
            local_offset: u64::from(u32_at(b, at + 42)?),
        };
        // ZIP64 extra field: the 64-bit values of whichever fields read 0xFFFFFFFF, in order.
        let mut x = name_at + name_len;
        let extra_end = x + extra_len;
        while x + 4 <= extra_end {
            let (id, len) = (u16_at(b, x)?, usize::from(u16_at(b, x + 2)?));
            if id == 1 {
                let mut v = x + 4;
                for field in [&mut e.size, &mut e.compressed, &mut e.local_offset] {
                    if *field == 0xFFFF_FFFF && v + 8 <= x + 4 + len {
                        *field = u64_at(b, v)?;
                        v += 8;
                    }
                }
            }
            x += 4 + len;
        }
        out.push(e);
        at = extra_end + comment_len;
    }
    Ok(out)
}

/// The uncompressed bytes of `e`, CRC checked.
fn member_bytes(b: &[u8], e: &Entry) -> Result<Vec<u8>> {
    ensure!(e.flags & 1 == 0, "member {} is encrypted", e.name);
    let at = usize::try_from(e.local_offset)?;
    ensure!(
        u32_at(b, at)? == LOCAL,
        "member {}: no local header at byte {at}",
        e.name
    );
    let start = at + 30 + usize::from(u16_at(b, at + 26)?) + usize::from(u16_at(b, at + 28)?);
    let data = b
        .get(start..start.saturating_add(usize::try_from(e.compressed)?))
        .ok_or_else(|| anyhow!("member {} runs past the end of the file", e.name))?;
    let size = usize::try_from(e.size)?;
    let out = match e.method {
        0 => data.to_vec(),
        8 => {
            let mut out = Vec::with_capacity(size);
            flate2::read::DeflateDecoder::new(data)
                .take(e.size)
                .read_to_end(&mut out)
                .with_context(|| format!("member {}: bad deflate data", e.name))?;
            out
        }
        m => bail!(
            "member {} uses compression method {m}; only stored (0) and deflate (8) are read",
            e.name
        ),
    };
    ensure!(
        out.len() == size,
        "member {}: {} bytes, the directory says {size}",
        e.name,
        out.len()
    );
    ensure!(
        crc32fast::hash(&out) == e.crc,
        "member {}: CRC-32 mismatch (the file is damaged)",
        e.name
    );
    Ok(out)
}

/// The text after `'key':` in a header dict, trimmed.
fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let pat = format!("'{key}':");
    let at = header
        .find(&pat)
        .ok_or_else(|| anyhow!("the .npy header has no '{key}': {header}"))?;
    Ok(header[at + pat.len()..].trim_start())
}

/// Parses one `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<Array> {
    ensure!(
        bytes.starts_with(NPY_MAGIC),
        "not a .npy array (no \\x93NUMPY magic)"
    );
    let major = *bytes
        .get(6)
        .ok_or_else(|| anyhow!("truncated .npy header"))?;
    let (len, body) = match major {
        1 => (usize::from(u16_at(bytes, 8)?), 10),
        2 | 3 => (usize::try_from(u32_at(bytes, 8)?)?, 12),
        v => bail!(".npy version {v} is not supported (1, 2 or 3)"),
    };
    let header = bytes
        .get(body..body + len)
        .ok_or_else(|| anyhow!("truncated .npy header"))?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let descr = header_value(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| anyhow!("bad 'descr' in .npy header: {header}"))?;
    let fortran = header_value(header, "fortran_order")?.starts_with("True");
    let shape_src = header_value(header, "shape")?;
    let shape_src = shape_src
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow!("bad 'shape' in .npy header: {header}"))?;
    let shape = shape_src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("bad 'shape' in .npy header: {header}"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))?;
    let (width, little) = match descr {
        "<f8" => (8, true),
        ">f8" => (8, false),
        "<f4" => (4, true),
        ">f4" => (4, false),
        d => bail!("array type '{d}' is not read: expected float32 or float64 ('<f4', '<f8')"),
    };
    let data = &bytes[body + len..];
    ensure!(
        data.len() == count * width,
        "array {shape:?} of '{descr}' needs {} bytes, the .npy holds {}",
        count * width,
        data.len()
    );
    let mut values: Vec<f64> = match (width, little) {
        (8, true) => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        (8, false) => data
            .chunks_exact(8)
            .map(|c| f64::from_be_bytes(c.try_into().expect("8")))
            .collect(),
        (_, true) => data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4"))))
            .collect(),
        (_, false) => data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_be_bytes(c.try_into().expect("4"))))
            .collect(),
    };
    if fortran && shape.len() > 1 {
        values = fortran_to_c(&values, &shape);
    }
    Ok(Array { shape, values })
}

/// Reorders column-major (first index fastest) values to row-major.
fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    let mut idx = vec![0usize; shape.len()];
    for v in values {
        // idx is the multi-index of v, counted first index fastest.
        let row_major = idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i);
        out[row_major] = *v;
        for (i, &d) in idx.iter_mut().zip(shape) {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Reads the arrays `names` from the `.npz` bytes; every name must be there.
pub fn read_npz(bytes: &[u8], names: &[&str]) -> Result<Vec<Array>> {
    let all = entries(bytes)?;
    names
        .iter()
        .map(|name| {
            let member = format!("{name}.npy");
            let e = all.iter().find(|e| e.name == member).ok_or_else(|| {
                let have: Vec<&str> = all
                    .iter()
                    .map(|e| e.name.trim_end_matches(".npy"))
                    .collect();
                anyhow!("no array '{name}' (it holds {})", have.join(", "))
            })?;
            parse_npy(&member_bytes(bytes, e)?).with_context(|| format!("array '{name}'"))
        })
        .collect()
}

/// A shape as numpy writes it: `()`, `(3,)`, `(3, 3)`.
pub fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

/// A version 1.0 `.npy` of little-endian f64 in C order.
pub fn npy_f64(shape: &[usize], values: &[f64]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        values.len(),
        "npy_f64: shape {shape:?} does not match {} values",
        values.len()
    );
    let mut header = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': {}, }}",
        shape_text(shape)
    );
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 8);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A zip archive of stored members `(name, bytes)`. Members and the archive must stay below
/// 4 GiB (no ZIP64 records are written).
pub fn zip_stored(members: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    // DOS date 1980-01-01, time 00:00: fixed, so the bytes depend on the content only.
    const DATE: u16 = (1 << 5) | 1;
    let mut out = Vec::new();
    let mut central = Vec::new();
    let small = |v: usize, what: &str| {
        u32::try_from(v)
            .map_err(|_| anyhow!("{what} is 4 GiB or more: too large for a zip without ZIP64"))
    };
    for (name, data) in members {
        let offset = small(out.len(), "the archive")?;
        let (size, crc) = (small(data.len(), name)?, crc32fast::hash(data));
        let name_len = u16::try_from(name.len()).map_err(|_| anyhow!("member name too long"))?;
        let fixed = |sig: u32, out: &mut Vec<u8>, central: bool| {
            out.extend_from_slice(&sig.to_le_bytes());
            if central {
                out.extend_from_slice(&20u16.to_le_bytes()); // made by: 2.0
            }
            out.extend_from_slice(&20u16.to_le_bytes()); // needed: 2.0
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&0u16.to_le_bytes()); // stored
            out.extend_from_slice(&0u16.to_le_bytes()); // time
            out.extend_from_slice(&DATE.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes()); // compressed
            out.extend_from_slice(&size.to_le_bytes()); // uncompressed
            out.extend_from_slice(&name_len.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        fixed(LOCAL, &mut out, false);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        fixed(CENTRAL, &mut central, true);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes()); // external: a regular file
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = small(out.len(), "the archive")?;
    let cd_size = small(central.len(), "the central directory")?;
    out.extend_from_slice(&central);
    let count = u16::try_from(members.len()).map_err(|_| anyhow!("too many members"))?;
    out.extend_from_slice(&END.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    Ok(out)
}

/// An `.npz` of f64 arrays `(name, shape, values)`.
pub fn npz_f64(arrays: &[(&str, &[usize], &[f64])]) -> Result<Vec<u8>> {
    let members: Vec<(String, Vec<u8>)> = arrays
        .iter()
        .map(|(name, shape, values)| (format!("{name}.npy"), npy_f64(shape, values)))
        .collect();
    zip_stored(&members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mu = [1.5, -2.0, 3.25];
        let sigma: Vec<f64> = (0..9).map(|v| v as f64 * 0.5 - 1.0).collect();
        let bytes = npz_f64(&[("mu", &[3], &mu), ("sigma", &[3, 3], &sigma)]).unwrap();
        let got = read_npz(&bytes, &["sigma", "mu"]).unwrap();
        assert_eq!(
            got[0],
            Array {
                shape: vec![3, 3],
                values: sigma.clone()
            }
        );
        assert_eq!(
            got[1],
            Array {
                shape: vec![3],
                values: mu.to_vec()
            }
        );
        // Same input, same bytes.
        assert_eq!(
            bytes,
            npz_f64(&[("mu", &[3], &mu), ("sigma", &[3, 3], &sigma)]).unwrap()
        );
        let err = read_npz(&bytes, &["features"]).unwrap_err().to_string();
        assert!(
            err.contains("no array 'features'") && err.contains("mu, sigma"),
            "{err}"
        );
    }

    #[test]
    fn header_is_what_numpy_writes() {
        let npy = npy_f64(&[2048], &vec![0.0; 2048]);
        let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
        assert_eq!(
            header.trim_end(),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2048,), }"
        );
        assert!(header.ends_with('\n'));
    }

    fn raw_npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = NPY_MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn fortran_order_and_other_types_are_read() {
        // 2×3 in column-major order: columns (1, 4), (2, 5), (3, 6).
        let data: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n";
        let a = parse_npy(&raw_npy(header, &data)).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let data: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let header = "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }\n";
        assert_eq!(
            parse_npy(&raw_npy(header, &data)).unwrap().values,
            [0.5, -2.0]
        );
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n";
        let err = parse_npy(&raw_npy(header, &[0; 8]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'<i8'"), "{err}");
    }

    #[test]
    fn damage_is_reported() {
        let bytes = npz_f64(&[("mu", &[2], &[1.0, 2.0])]).unwrap();
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        assert!(read_npz(&bad, &["mu"]).is_err());
        assert!(read_npz(&bytes[..bytes.len() - 5], &["mu"]).is_err());
        assert!(read_npz(b"not a zip at all, just some text", &["mu"]).is_err());
        let npy = npy_f64(&[2], &[1.0, 2.0]);
        assert!(parse_npy(&npy[..npy.len() - 1]).is_err());
    }
}
