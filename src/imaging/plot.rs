//! The loss curve: training step across, loss on a log10 scale up, drawn by hand on an RGB image.
//!
//! Raw losses are noisy, so they are drawn faint and an exponential moving average (taken in log
//! space, bias-corrected at the start) is drawn bold on top. Points whose loss is NaN, infinite or
//! not positive cannot sit on a log axis and are skipped.

use std::path::Path;

use image::{ExtendedColorType, Rgb, RgbImage};

use super::font::{draw_text, text_width, GLYPH_H};
use super::png::write_png;
use super::ImagingError;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const TEXT: Rgb<u8> = Rgb([30, 30, 30]);
const RAW: Rgb<u8> = Rgb([170, 195, 235]);
const SMOOTH: Rgb<u8> = Rgb([20, 60, 170]);

/// Smallest and largest accepted image sides.
const MIN_WIDTH: u32 = 120;
const MIN_HEIGHT: u32 = 80;
const MAX_SIDE: u32 = 8192;

/// Loss values for labels: plain decimals with three significant digits between 0.001 and
/// 10 000, exponent notation (`1.5e-4`) outside.
fn format_loss(v: f64) -> String {
    if (1e-3..1e4).contains(&v) {
        let decimals = (2 - v.log10().floor() as i32).clamp(0, 5) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exp}")
    }
}

/// Exponential moving average of `ys` with bias correction, so early values are not pulled
/// towards zero. The window grows with the number of points, as their square root: a few
/// points are barely smoothed, long runs become a clean trend.
fn smooth(ys: &[f64]) -> Vec<f64> {
    let window = (ys.len() as f64).sqrt().clamp(1.0, 1000.0);
    let decay = 1.0 - 1.0 / window;
    let (mut avg, mut weight) = (0.0, 0.0);
    ys.iter()
        .map(|&y| {
            avg = decay * avg + (1.0 - decay) * y;
            weight = decay * weight + (1.0 - decay);
            avg / weight
        })
        .collect()
}

/// Vertical positions of the horizontal grid lines, in log10 units: the decades within
/// [lo, hi], with 2× and 5× lines added when fewer than two decades show, and an even split when
/// even those are too few.
fn log_grid(lo: f64, hi: f64) -> Vec<f64> {
    let decades: Vec<f64> = (lo.ceil() as i64..=hi.floor() as i64)
        .map(|k| k as f64)
        .collect();
    if decades.len() >= 2 {
        return decades;
    }
    let mut lines: Vec<f64> = (lo.floor() as i64..=hi.ceil() as i64)
        .flat_map(|k| [1.0f64, 2.0, 5.0].map(|m| k as f64 + m.log10()))
        .filter(|v| (lo..=hi).contains(v))
        .collect();
    if lines.len() < 2 {
        lines = (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect();
    }
    lines
}

/// An RGB canvas with the plot rectangle and the data → pixel mapping.
struct Canvas {
    img: RgbImage,
    /// Plot rectangle: left, top, right, bottom (inclusive pixel coordinates).
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    /// Data ranges: steps across, log10(loss) up.
    sx: (f64, f64),
    sy: (f64, f64),
}

impl Canvas {
    fn px(&self, step: f64) -> i64 {
        let t = (step - self.sx.0) / (self.sx.1 - self.sx.0);
        self.x0 + (t * (self.x1 - self.x0) as f64).round() as i64
    }

    fn py(&self, log_loss: f64) -> i64 {
        let t = (log_loss - self.sy.0) / (self.sy.1 - self.sy.0);
        self.y1 - (t * (self.y1 - self.y0) as f64).round() as i64
    }

    fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && x < self.img.width() as i64 && y < self.img.height() as i64 {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    /// A square brush of side 2r + 1 centred on (x, y).
    fn dab(&mut self, x: i64, y: i64, r: i64, c: Rgb<u8>) {
        for dy in -r..=r {
            for dx in -r..=r {
                self.put(x + dx, y + dy, c);
            }
        }
    }

    /// Bresenham's line from (xa, ya) to (xb, yb) with a brush of radius `r`.
    fn line(&mut self, (mut x, mut y): (i64, i64), (xb, yb): (i64, i64), r: i64, c: Rgb<u8>) {
        let (dx, dy) = ((xb - x).abs(), -(yb - y).abs());
        let (step_x, step_y) = (if x < xb { 1 } else { -1 }, if y < yb { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.dab(x, y, r, c);
            if x == xb && y == yb {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += step_x;
            }
            if e2 <= dx {
                err += dx;
                y += step_y;
            }
        }
    }

    fn polyline(&mut self, pts: &[(i64, i64)], r: i64, c: Rgb<u8>) {
        match pts {
            [] => {}
            [p] => self.dab(p.0, p.1, r + 1, c),
            _ => {
                for w in pts.windows(2) {
                    self.line(w[0], w[1], r, c);
                }
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64) {
        draw_text(&mut self.img, x, y, s, scale, TEXT);
    }
}

/// Draws the loss curve of `points` (step, loss) into a `width`×`height` PNG at `path`.
pub fn save_loss_curve(
    path: &Path,
    points: &[(u64, f64)],
    width: u32,
    height: u32,
) -> Result<(), ImagingError> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(ImagingError::Shape(format!(
            "loss curve {}: {width}×{height} pixels, expected width {MIN_WIDTH}–{MAX_SIDE} and height {MIN_HEIGHT}–{MAX_SIDE}",
            path.display()
        )));
    }
    let img = render(points, width, height);
    write_png(path, img.as_raw(), width, height, ExtendedColorType::Rgb8)
}

/// The plot as an image; separate from the file writing so it can be inspected in tests.
fn render(points: &[(u64, f64)], width: u32, height: u32) -> RgbImage {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, loss)| loss.is_finite() && *loss > 0.0)
        .map(|&(step, loss)| (step as f64, loss.log10()))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Data ranges; a single step or a single loss value still gets an axis of non-zero length.
    let (mut sx, mut sy) = ((0.0, 1.0), (0.0, 1.0));
    let mut labels_y = None;
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        sx = (first.0, last.0.max(first.0 + 1.0));
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
        sy = (lo - pad, hi + pad);
        labels_y = Some((lo, hi));
    }

    let scale = i64::from((width.min(height) / 300).clamp(1, 4));
    let char_h = GLYPH_H * scale;
    let gap = 4 * scale;
    let y_text: Vec<(f64, String)> = match labels_y {
        Some((lo, hi)) => vec![
            (lo, format_loss(10f64.powf(lo))),
            (hi, format_loss(10f64.powf(hi))),
        ],
        None => vec![],
    };
    let x_text = [
        (sx.0, format!("{}", sx.0 as u64)),
        (sx.1, format!("{}", sx.1 as u64)),
    ];
    let widest_y = y_text
        .iter()
        .map(|(_, s)| text_width(s, scale))
        .max()
        .unwrap_or(0);
    let (w, h) = (i64::from(width), i64::from(height));
    let x0 = widest_y + 2 * gap;
    let x1 = (w - 1 - (text_width(&x_text[1].1, scale) / 2).max(gap) - gap).max(x0 + 8);
    let y0 = char_h + 2 * gap;
    let y1 = (h - 1 - 2 * char_h - 3 * gap).max(y0 + 8);

    let mut cv = Canvas {
        img: RgbImage::from_pixel(width, height, BACKGROUND),
        x0,
        y0,
        x1,
        y1,
        sx,
        sy,
    };

    // Light grid lines: four equal divisions across, decades (or finer) up.
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * i / 4;
        cv.line((x, y0), (x, y1), 0, GRID);
    }
    for v in log_grid(sy.0, sy.1) {
        let y = cv.py(v);
        cv.line((x0, y), (x1, y), 0, GRID);
    }

    // The curves: raw points faint, the smoothed line bold on top.
    let raw: Vec<(i64, i64)> = pts.iter().map(|&(s, l)| (cv.px(s), cv.py(l))).collect();
    cv.polyline(&raw, 0, RAW);
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let smoothed: Vec<(i64, i64)> = pts
        .iter()
        .zip(smooth(&ys))
        .map(|(&(s, _), l)| (cv.px(s), cv.py(l)))
        .collect();
    cv.polyline(&smoothed, scale, SMOOTH);

    // Axes with ticks at the labelled values, then the labels and titles.
    cv.line((x0, y0), (x0, y1), 0, AXIS);
    cv.line((x0, y1), (x1, y1), 0, AXIS);
    for (v, s) in &y_text {
        let y = cv.py(*v);
        cv.line((x0 - gap / 2, y), (x0, y), 0, AXIS);
        let tw = text_width(s, scale);
        cv.text(
            x0 - gap - tw,
            (y - char_h / 2).clamp(0, h - char_h),
            s,
            scale,
        );
    }
    for (v, s) in &x_text {
        let x = cv.px(*v);
        cv.line((x, y1), (x, y1 + gap / 2), 0, AXIS);
        let tw = text_width(s, scale);
        cv.text((x - tw / 2).clamp(0, (w - tw).max(0)), y1 + gap, s, scale);
    }
    cv.text(x0, gap, "loss (log)", scale);
    let title_w = text_width("step", scale);
    cv.text(
        (x0 + x1 - title_w) / 2,
        y1 + 2 * gap + char_h,
        "step",
        scale,
    );
    cv.img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_labels_are_short_and_readable() {
        assert_eq!(format_loss(0.0532), "0.0532");
        assert_eq!(format_loss(1.234), "1.23");
        assert_eq!(format_loss(2.0), "2");
        assert_eq!(format_loss(123.4), "123");
        assert_eq!(format_loss(0.00015), "1.5e-4");
        assert_eq!(format_loss(25000.0), "2.5e4");
        assert_eq!(format_loss(1e-7), "1e-7");
    }

    #[test]
    fn smoothing_follows_a_constant_and_damps_noise() {
        assert!(smooth(&[3.0; 500]).iter().all(|&v| (v - 3.0).abs() < 1e-12));
        let noisy: Vec<f64> = (0..1000)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let s = smooth(&noisy);
        assert!(s[500..].iter().all(|v| v.abs() < 0.1), "{:?}", &s[500..510]);
        assert_eq!(smooth(&[4.0]), [4.0]);
        assert!(smooth(&[]).is_empty());
    }

    #[test]
    fn grid_lines_fall_on_decades_or_finer_steps() {
        assert_eq!(log_grid(-3.2, -0.5), [-3.0, -2.0, -1.0]);
        // Only one decade inside: 2× lines join it.
        assert_eq!(log_grid(-1.2, -0.6), [-1.0, -1.0 + 2f64.log10()]);
        assert_eq!(log_grid(0.01, 0.02).len(), 5);
    }

    #[test]
    fn decreasing_loss_draws_the_bold_line_from_top_left_to_bottom_right() {
        let pts: Vec<(u64, f64)> = (0..400)
            .map(|i| (i * 10, 2.0 * 0.99f64.powi(i as i32)))
            .collect();
        let img = render(&pts, 300, 200);
        let img = &img;
        let bold_rows = |xs: std::ops::Range<u32>| -> Vec<u32> {
            xs.flat_map(|x| (0..200).filter(move |&y| img.get_pixel(x, y) == &SMOOTH))
                .collect()
        };
        let (left, right) = (bold_rows(60..90), bold_rows(230..260));
        assert!(!left.is_empty() && !right.is_empty());
        let mean = |v: &[u32]| v.iter().sum::<u32>() as f64 / v.len() as f64;
        assert!(
            mean(&left) + 50.0 < mean(&right),
            "{} vs {}",
            mean(&left),
            mean(&right)
        );
    }
}
