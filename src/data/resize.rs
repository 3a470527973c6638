//! The geometry and colour conversions every file source shares: scale so the shorter side equals
//! the target size, crop the centre square, and write planar (C, S, S) bytes in 1 or 3 channels.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Pixel, RgbImage};

/// Catmull–Rom is sharp without the ringing of Lanczos3 on hard-edged digits and shapes.
const FILTER: FilterType = FilterType::CatmullRom;

/// Rec. 601 luma (the weights of PIL's `convert("L")`) in integer arithmetic, so a grey pixel
/// (r = g = b) maps to itself exactly.
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

/// The longest side, as a multiple of the shorter one, that is scaled as a whole: a longer image
/// is first cropped to its centred part of this shape. Only the centre square is kept in the end,
/// so this changes nothing but memory (and rounding, for such strips): enlarging a 1×10⁶ strip to
/// 64 pixels wide would otherwise build a 64 × 64·10⁶ image to keep 64×64 of it. The margin
/// left on each side of the kept part, 1.5× its width, is far beyond the filter's reach.
const MAX_ASPECT: u32 = 4;

/// The centred part of a `w`×`h` image (x, y, width, height) that [`fit_square`] scales: all of
/// it, unless one side is more than [`MAX_ASPECT`] times the other.
fn aspect_crop(w: u32, h: u32) -> (u32, u32, u32, u32) {
    if h / MAX_ASPECT > w {
        (0, (h - MAX_ASPECT * w) / 2, w, MAX_ASPECT * w)
    } else if w / MAX_ASPECT > h {
        ((w - MAX_ASPECT * h) / 2, 0, MAX_ASPECT * h, h)
    } else {
        (0, 0, w, h)
    }
}

/// Scales `img` so its shorter side is `size`, then keeps the centred `size`×`size` square.
/// Images already of that size are returned as they are; an image with no pixels (which no
/// decoder should produce) gives a black square rather than a division by zero.
pub(crate) fn fit_square<P>(img: ImageBuffer<P, Vec<u8>>, size: usize) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let s = size as u32;
    let (w, h) = img.dimensions();
    if (w, h) == (s, s) {
        return img;
    }
    if w == 0 || h == 0 {
        return ImageBuffer::new(s, s);
    }
    let (x, y, cw, ch) = aspect_crop(w, h);
    let img = if (cw, ch) == (w, h) {
        img
    } else {
        imageops::crop_imm(&img, x, y, cw, ch).to_image()
    };
    let (w, h) = (cw, ch);
    let scaled = |long: u32, short: u32| {
        ((u64::from(long) * u64::from(s) + u64::from(short) / 2) / u64::from(short)).max(1) as u32
    };
    let (nw, nh) = if w <= h {
        (s, scaled(h, w).max(s))
    } else {
        (scaled(w, h).max(s), s)
    };
    let resized = imageops::resize(&img, nw, nh, FILTER);
    if (nw, nh) == (s, s) {
        return resized;
    }
    imageops::crop_imm(&resized, (nw - s) / 2, (nh - s) / 2, s, s).to_image()
}

/// Appends an RGB image as (C, H, W): three planes, or one luma plane when `channels` is 1.
pub(crate) fn push_rgb(out: &mut Vec<u8>, img: &RgbImage, channels: usize) {
    if channels == 1 {
        out.extend(img.pixels().map(|p| luma(p[0], p[1], p[2])));
    } else {
        for c in 0..3 {
            out.extend(img.pixels().map(|p| p[c]));
        }
    }
}

/// Appends a grey image as (C, H, W): the plane once, or three times when `channels` is 3.
pub(crate) fn push_gray(out: &mut Vec<u8>, img: &GrayImage, channels: usize) {
    for _ in 0..channels {
        out.extend_from_slice(img.as_raw());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_keeps_grey_and_weights_green_most() {
        for v in [0u8, 1, 127, 128, 254, 255] {
            assert_eq!(luma(v, v, v), v);
        }
        assert_eq!(luma(255, 0, 0), 76); // 0.299 · 255 = 76.2
        assert_eq!(luma(0, 255, 0), 150); // 0.587 · 255 = 149.7
        assert_eq!(luma(0, 0, 255), 29); // 0.114 · 255 = 29.1
    }

    #[test]
    fn tall_image_is_scaled_to_width_and_cropped_in_the_middle() {
        // 10 wide, 50 tall: rows 0..10 are 0, 10..40 are 100, 40..50 are 200. Scaled by 1/2.5 to
        // 4×20, the centre crop (rows 8..12, source rows 20..30) lies well inside the 100 band,
        // even counting the filter's reach of ±5 source rows.
        let img = GrayImage::from_fn(10, 50, |_, y| {
            image::Luma([match y {
                0..10 => 0,
                10..40 => 100,
                _ => 200,
            }])
        });
        let out = fit_square(img, 4);
        assert_eq!(out.dimensions(), (4, 4));
        for p in out.pixels() {
            assert!((95..=105).contains(&p[0]), "{}", p[0]);
        }
    }

    #[test]
    fn long_strips_are_cropped_before_scaling() {
        // Up to 4:1 the whole image is scaled, as before.
        assert_eq!(aspect_crop(10, 40), (0, 0, 10, 40));
        assert_eq!(aspect_crop(43, 10), (0, 0, 43, 10));
        // Beyond, the centred 4:1 part: enlarging a 1×2²⁰ strip (as an IDX header can declare)
        // to 64 wide used to build a 64 × 2²⁶ image (4 GiB) to keep its centre 64×64.
        assert_eq!(aspect_crop(1, 1 << 20), (0, ((1 << 20) - 4) / 2, 1, 4));
        assert_eq!(aspect_crop(1000, 3), (494, 0, 12, 3));
        // A 1-pixel-wide strip, one value per row: the centre rows survive.
        let strip = GrayImage::from_fn(1, 1 << 20, |_, y| image::Luma([(y >> 12) as u8]));
        let out = fit_square(strip, 64);
        assert_eq!(out.dimensions(), (64, 64));
        assert!(out.pixels().all(|p| (126..=129).contains(&p[0])), "{out:?}");
        // No pixels at all: a black square, not a division by zero.
        let empty = GrayImage::new(0, 7);
        assert_eq!(fit_square(empty, 4), GrayImage::new(4, 4));
    }

    #[test]
    fn square_of_the_right_size_is_untouched() {
        let img = RgbImage::from_fn(5, 5, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let out = fit_square(img.clone(), 5);
        assert_eq!(out, img);
    }

    #[test]
    fn planes_come_out_channel_major() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([10 + x as u8, 20 + x as u8, 30]));
        let mut out = Vec::new();
        push_rgb(&mut out, &img, 3);
        assert_eq!(out, [10, 11, 20, 21, 30, 30]);
        let g = GrayImage::from_raw(2, 1, vec![5, 6]).unwrap();
        let mut out = Vec::new();
        push_gray(&mut out, &g, 3);
        assert_eq!(out, [5, 6, 5, 6, 5, 6]);
    }
}
