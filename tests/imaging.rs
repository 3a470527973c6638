//! PNG output, grids and the loss curve: files are decoded back with `image` and compared with
//! values worked out by hand.

use std::fs;
use std::path::PathBuf;

use ddpm::imaging::{
    make_grid, save_grid, save_loss_curve, save_png, to_u8, ImagingError, GRID_PAD, GRID_PAD_VALUE,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-imaging-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn names_in(dir: &PathBuf) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn png_round_trip_keeps_values_and_channel_order() {
    let dir = scratch("png");
    // (3, 2, 3): red plane ramps across, green is constant, blue is out of range (clamped).
    let (h, w) = (2, 3);
    let r = [-1.0, 0.0, 1.0, -0.5, 0.5, 0.25];
    let g = [0.0; 6];
    let b = [5.0, -5.0, 5.0, -5.0, 5.0, -5.0];
    let chw: Vec<f32> = [r, g, b].concat();
    let path = dir.join("rgb.png");
    save_png(&path, &chw, 3, h, w).unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    let img = img.to_rgb8();
    assert_eq!(img.dimensions(), (3, 2));
    // (v + 1) · 127.5, rounded: −1 → 0, 0 → 128, 1 → 255, −0.5 → 64, 0.5 → 191, 0.25 → 159.
    let red = [0, 128, 255, 64, 191, 159];
    for y in 0..2 {
        for x in 0..3 {
            let k = (y * 3 + x) as usize;
            let blue = if k.is_multiple_of(2) { 255 } else { 0 };
            assert_eq!(img.get_pixel(x, y).0, [red[k], 128, blue], "({y},{x})");
        }
    }

    let grey = dir.join("grey.png");
    save_png(&grey, &r, 1, 3, 2).unwrap();
    let img = image::open(&grey).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!(img.to_luma8().as_raw(), &red);
    assert_eq!(names_in(&dir), ["grey.png", "rgb.png"]); // no temporary files left
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn png_refuses_bad_shapes_and_unwritable_paths_without_writing() {
    let dir = scratch("png-bad");
    let p = dir.join("x.png");
    let err = save_png(&p, &[0.0; 5], 1, 2, 3).unwrap_err();
    assert!(matches!(err, ImagingError::Shape(_)), "{err}");
    assert!(err.to_string().contains("x.png"), "{err}");
    assert!(save_png(&p, &[0.0; 8], 2, 2, 2).is_err());
    assert!(save_png(&p, &[], 1, 0, 0).is_err());
    assert!(names_in(&dir).is_empty());

    let nowhere = dir.join("missing-dir/y.png");
    let err = save_png(&nowhere, &[0.0; 4], 1, 2, 2).unwrap_err();
    assert!(matches!(err, ImagingError::Io { .. }), "{err}");
    assert!(err.to_string().contains("y.png"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn to_u8_rounds_and_clamps() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(0.6), 204); // 1.6 · 127.5 = 204
    assert_eq!(to_u8(2.0), 255);
    assert_eq!(to_u8(-2.0), 0);
}

#[test]
fn grid_places_images_in_reading_order_with_padding() {
    // Five 2×3 grey images, image k filled with k / 10, two per row, one pixel of padding.
    let (n, c, h, w, nrow, pad) = (5, 1, 2, 3, 2, 1);
    let images: Vec<f32> = (0..n)
        .flat_map(|k| std::iter::repeat_n(k as f32 / 10.0, h * w))
        .collect();
    let (grid, gh, gw) = make_grid(&images, n, c, h, w, nrow, pad);
    // 3 rows of 2: H' = 3·(2 + 1) + 1, W' = 2·(3 + 1) + 1.
    assert_eq!((gh, gw), (10, 9));
    assert_eq!(grid.len(), gh * gw);
    let at = |y: usize, x: usize| grid[y * gw + x];
    let mut expect = vec![GRID_PAD_VALUE; gh * gw];
    for k in 0..n {
        let (top, left) = (1 + (k / 2) * 3, 1 + (k % 2) * 4);
        for y in 0..h {
            for x in 0..w {
                expect[(top + y) * gw + left + x] = k as f32 / 10.0;
            }
        }
    }
    assert_eq!(grid, expect);
    // Spot checks written out: image 3 is row 1, column 1; the sixth slot is padding.
    assert_eq!(at(4, 5), 0.3);
    assert_eq!(at(8, 5), GRID_PAD_VALUE);
    assert_eq!(at(0, 0), GRID_PAD_VALUE);
}

#[test]
fn grid_keeps_channels_apart_and_narrows_to_the_image_count() {
    // Two 1×1 RGB images with nrow 8: one row of two.
    let images = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let (grid, gh, gw) = make_grid(&images, 2, 3, 1, 1, 8, 1);
    assert_eq!((gh, gw), (3, 5));
    let plane = gh * gw;
    // Pixel (1, 1) is image 0, pixel (1, 3) image 1, in each plane.
    for (ch, (a, b)) in [(0.1, 0.4), (0.2, 0.5), (0.3, 0.6)].into_iter().enumerate() {
        assert_eq!(grid[ch * plane + gw + 1], a);
        assert_eq!(grid[ch * plane + gw + 3], b);
    }
}

#[test]
fn save_grid_writes_the_tiled_png() {
    let dir = scratch("grid");
    let path = dir.join("grid.png");
    let images: Vec<f32> = (0..3 * 3 * 4 * 4)
        .map(|v| if v < 48 { -1.0 } else { 1.0 })
        .collect();
    save_grid(&path, &images, 3, 3, 4, 4, 2).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    let side = 2 * (4 + GRID_PAD as u32) + GRID_PAD as u32;
    assert_eq!(img.dimensions(), (side, side));
    let p = GRID_PAD as u32;
    assert_eq!(img.get_pixel(p, p).0, [0, 0, 0]); // image 0 is black
    assert_eq!(img.get_pixel(2 * p + 4, p).0, [255, 255, 255]); // image 1 white
    let pad = to_u8(GRID_PAD_VALUE);
    assert_eq!(img.get_pixel(0, 0).0, [pad; 3]);
    assert!(save_grid(&path, &images[..10], 3, 3, 4, 4, 2).is_err());
    assert!(save_grid(&path, &[], 0, 3, 4, 4, 2).is_err());
    fs::remove_dir_all(&dir).unwrap();
}

/// Pixels strongly blue: the bold smoothed line (faint raw points and grey grid are not).
fn bold_blue(img: &image::RgbImage) -> usize {
    img.pixels()
        .filter(|p| p[2] as i32 - p[0] as i32 > 100)
        .count()
}

#[test]
fn loss_curve_is_written_for_no_one_or_many_points_and_skips_bad_losses() {
    let dir = scratch("loss");
    let open = |name: &str| image::open(dir.join(name)).unwrap().to_rgb8();

    save_loss_curve(&dir.join("none.png"), &[], 320, 200).unwrap();
    let img = open("none.png");
    assert_eq!(img.dimensions(), (320, 200));
    assert_eq!(bold_blue(&img), 0);
    assert!(
        img.pixels().any(|p| p.0 != [255, 255, 255]),
        "axes are drawn"
    );

    save_loss_curve(&dir.join("one.png"), &[(100, 0.5)], 320, 200).unwrap();
    assert!(bold_blue(&open("one.png")) > 0);

    let bad = [
        (0, f64::NAN),
        (1, f64::INFINITY),
        (2, 0.0),
        (3, -1.0),
        (4, f64::NEG_INFINITY),
    ];
    save_loss_curve(&dir.join("bad.png"), &bad, 320, 200).unwrap();
    assert_eq!(bold_blue(&open("bad.png")), 0, "no drawable point");

    let mut many: Vec<(u64, f64)> = (0..5000u64)
        .map(|s| {
            (
                s,
                1.0 / (1.0 + s as f64 / 100.0) * (1.0 + 0.3 * ((s * 7919) % 13) as f64 / 13.0),
            )
        })
        .collect();
    many.extend_from_slice(&bad);
    many.swap(10, 4000); // out of order
    save_loss_curve(&dir.join("many.png"), &many, 640, 400).unwrap();
    let img = open("many.png");
    assert_eq!(img.dimensions(), (640, 400));
    assert!(bold_blue(&img) > 300);

    // Too small to draw, and a directory that does not exist: errors, not panics.
    assert!(save_loss_curve(&dir.join("tiny.png"), &many, 10, 10).is_err());
    let err = save_loss_curve(&dir.join("no/such/dir.png"), &many, 320, 200).unwrap_err();
    assert!(err.to_string().contains("dir.png"), "{err}");
    assert_eq!(
        names_in(&dir),
        ["bad.png", "many.png", "none.png", "one.png"]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn upscale_nearest_repeats_each_pixel_in_a_k_by_k_block() {
    // One 2×2 grey image [[a, b], [c, d]] enlarged 3×: each value fills a 3×3 block.
    let img = [0.1f32, 0.2, 0.3, 0.4];
    let big = ddpm::imaging::upscale_nearest(&img, 1, 1, 2, 2, 3);
    assert_eq!(big.len(), 36);
    for y in 0..6 {
        for x in 0..6 {
            assert_eq!(big[y * 6 + x], img[(y / 3) * 2 + x / 3], "({y}, {x})");
        }
    }
}
