//! What the commands share in reading their flags: counts with a lower bound ("must be at least
//! 1", not clap's range notation), the nearest of a set of names for a typo, plurals, and
//! geometry errors that name the flag the user passed and the nearest sizes that work.

use crate::nn::{ConfigError, UNetConfig};
use crate::usage_error::usage;

/// A whole number of at least `MIN` (a clap value parser).
pub fn at_least<const MIN: u64>(s: &str) -> Result<u64, String> {
    let v = whole_number(s)?;
    if v < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    Ok(v)
}

/// A whole number from `MIN` to `MAX` (a clap value parser).
pub fn between<const MIN: u64, const MAX: u64>(s: &str) -> Result<u64, String> {
    let v = whole_number(s)?;
    if !(MIN..=MAX).contains(&v) {
        return Err(format!("must be from {MIN} to {MAX}"));
    }
    Ok(v)
}

fn whole_number(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "expected a whole number".to_string())
}

/// `1 thread`, `2 threads`.
pub fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The candidate closest to `typed` by edit distance, if it is close enough to be a typo (at
/// most a third of its letters changed, and at least one letter kept).
pub fn nearest<'a>(typed: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let typed = typed.to_ascii_lowercase();
    candidates
        .iter()
        .map(|&c| (edit_distance(&typed, &c.to_ascii_lowercase()), c))
        .filter(|&(d, c)| d > 0 && 3 * d <= c.chars().count().max(typed.chars().count()))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|c| c.eq_ignore_ascii_case(&typed))
        })
}

/// Edit distance in characters: insertions, deletions, substitutions and swaps of two
/// neighbours (`minst` is one edit from `mnist`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: the distance between the first i letters of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A model geometry that [`UNetConfig::validate`] refused after the flags in `given` (the
/// config field each sets, and the flag as the user typed it, e.g. `("sample_size",
/// "--image-size 30")`) changed `model`: a usage error naming the flag responsible, with the
/// nearest sizes that work for a size that does not divide evenly. `model_flag` is the flag
/// that chose the model (`--model tiny`), `model_desc` says what it is (`the tiny preset`).
pub fn geometry_error(
    model_flag: &str,
    model_desc: &str,
    model: &UNetConfig,
    e: ConfigError,
    given: &[(&str, String)],
) -> anyhow::Error {
    let flag = given
        .iter()
        .find(|(field, _)| {
            *field == e.field || (*field == "in_channels" && e.field == "out_channels")
        })
        .map(|(_, flag)| flag.as_str());
    let Some(flag) = flag else {
        return usage(format!("{model_flag}: {e}"));
    };
    if e.field == "sample_size" && model.sample_size > 0 {
        let levels = model.block_out_channels.len().max(1);
        let factor = 1usize << (levels - 1);
        if !model.sample_size.is_multiple_of(factor) {
            let below = model.sample_size / factor * factor;
            let above = below + factor;
            let nearest = if below == 0 {
                above.to_string()
            } else {
                format!("{below} or {above}")
            };
            return usage(format!(
                "{flag}: {model_desc} halves the image {} ({levels} levels), so its side must \
                 be a multiple of {factor}; the nearest sizes are {nearest}",
                plural((levels - 1) as u64, "time", "times")
            ));
        }
    }
    usage(format!("{flag}: {} ({model_desc})", e.msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_what_they_need() {
        assert_eq!(at_least::<1>("3"), Ok(3));
        assert_eq!(at_least::<1>("0").unwrap_err(), "must be at least 1");
        assert_eq!(at_least::<2>("1").unwrap_err(), "must be at least 2");
        assert_eq!(at_least::<1>("-1").unwrap_err(), "expected a whole number");
        assert_eq!(between::<2, 1000>("1000"), Ok(1000));
        assert_eq!(
            between::<2, 1000>("1001").unwrap_err(),
            "must be from 2 to 1000"
        );
    }

    #[test]
    fn typos_find_their_name_and_strangers_find_none() {
        let kinds = ["synthetic", "folder", "mnist", "cifar10"];
        assert_eq!(nearest("synthtic", &kinds), Some("synthetic"));
        assert_eq!(nearest("Synthetic", &kinds), Some("synthetic"));
        assert_eq!(nearest("minst", &kinds), Some("mnist"));
        assert_eq!(nearest("cifar", &kinds), Some("cifar10"));
        assert_eq!(nearest("imagenet", &kinds), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("minst", "mnist"), 1);
        assert_eq!(plural(1u64, "thread", "threads"), "1 thread");
        assert_eq!(plural(2u64, "thread", "threads"), "2 threads");
    }

    #[test]
    fn a_size_error_names_the_flag_and_the_nearest_sizes() {
        let mut m = UNetConfig::preset("tiny").unwrap();
        m.sample_size = 30;
        let e = m.validate().unwrap_err();
        let msg = geometry_error(
            "--model tiny",
            "the tiny preset",
            &m,
            e,
            &[("sample_size", "--image-size 30".into())],
        )
        .to_string();
        assert!(msg.starts_with("--image-size 30: "), "{msg}");
        assert!(msg.contains("28 or 32"), "{msg}");
        assert!(!msg.contains("--channels"), "{msg}");
        // Not a flag the user passed: the model is at fault.
        let e = m.validate().unwrap_err();
        let msg = geometry_error("--model tiny", "the tiny preset", &m, e, &[]).to_string();
        assert!(msg.starts_with("--model tiny: "), "{msg}");
    }
}
