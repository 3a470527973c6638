//! Datasets and batches: every source is written to a scratch directory with known content, loaded
//! back and compared; the loader's batches are checked against an independent decoding of which
//! image (and which orientation) each batch item holds.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ddpm::data::{
    batch_indices, load, make_batch, Batch, DataError, DataSpec, Dataset, Loader, LoaderConfig,
};

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-data-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// Batches and the loader

/// `n` grey images of side 4 whose pixels are all different across the set and not symmetric
/// left–right, so a batch item identifies its image and orientation. Labels are `i % 3`.
fn toy(n: usize) -> Dataset {
    let (c, s) = (1, 4);
    let pixels = (0..n * c * s * s).map(|v| (v % 256) as u8).collect();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    let names = ["a", "b", "c"].map(String::from).to_vec();
    Dataset::new("toy", c, s, pixels, Some(labels), names).unwrap()
}

/// Image `i` as the loader should deliver it, written out independently: v / 127.5 − 1, columns
/// reversed when mirrored.
fn expected_item(ds: &Dataset, i: usize, mirror: bool) -> Vec<f32> {
    let s = ds.size;
    let img = &ds.pixels[i * ds.channels * s * s..(i + 1) * ds.channels * s * s];
    let mut out = Vec::new();
    for c in 0..ds.channels {
        for y in 0..s {
            for x in 0..s {
                let from = if mirror { s - 1 - x } else { x };
                out.push(img[(c * s + y) * s + from] as f32 / 127.5 - 1.0);
            }
        }
    }
    out
}

/// Which image and orientation each item of `b` is, found by comparing with every image.
fn identify(ds: &Dataset, b: &Batch) -> Vec<(usize, bool)> {
    let chw = ds.channels * ds.size * ds.size;
    b.x.chunks(chw)
        .map(|item| {
            (0..ds.len())
                .flat_map(|i| [(i, false), (i, true)])
                .find(|&(i, m)| expected_item(ds, i, m) == item)
                .expect("batch item matches no dataset image")
        })
        .collect()
}

#[test]
fn batches_are_deterministic_and_depend_on_the_seed() {
    let ds = toy(10);
    let a = make_batch(&ds, 7, 3, 6, true);
    assert_eq!(a, make_batch(&ds, 7, 3, 6, true));
    assert_eq!(a.step, 3);
    assert_eq!(a.x.len(), 6 * 16);
    assert_ne!(a.x, make_batch(&ds, 8, 3, 6, true).x);
    assert_ne!(a.x, make_batch(&ds, 7, 4, 6, true).x);
}

#[test]
fn batch_values_are_the_images_scaled_to_minus_one_one() {
    let ds = toy(16); // 256 pixels: every byte value 0..=255 once
    let b = make_batch(&ds, 1, 0, 16, false);
    assert!(b.x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(b.x.contains(&-1.0) && b.x.contains(&1.0));
    let ids = identify(&ds, &b);
    let want: Vec<(usize, bool)> = batch_indices(16, 1, 0, 16)
        .into_iter()
        .map(|i| (i, false))
        .collect();
    assert_eq!(ids, want);
    let labels: Vec<u32> = ids.iter().map(|&(i, _)| i as u32 % 3).collect();
    assert_eq!(b.labels.unwrap(), labels);
}

#[test]
fn every_image_appears_once_per_epoch_and_epochs_are_shuffled_differently() {
    // 10 images in batches of 4: batches 2, 4 and 7 straddle epoch boundaries.
    let ds = toy(10);
    let stream: Vec<usize> = (0..10)
        .flat_map(|step| identify(&ds, &make_batch(&ds, 42, step, 4, true)))
        .map(|(i, _)| i)
        .collect();
    let epochs: Vec<&[usize]> = stream.chunks(10).collect();
    for (e, epoch) in epochs.iter().enumerate() {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "epoch {e}: {epoch:?}");
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[0], (0..10).collect::<Vec<_>>().as_slice());
}

#[test]
fn flip_mirrors_about_half_of_the_items_and_only_when_asked() {
    let ds = toy(10);
    let mut mirrored = 0;
    let mut total = 0;
    for step in 0..10 {
        let flipped = identify(&ds, &make_batch(&ds, 5, step, 20, true));
        let plain = identify(&ds, &make_batch(&ds, 5, step, 20, false));
        for (f, p) in flipped.iter().zip(&plain) {
            assert_eq!(f.0, p.0, "flipping must not change which image is drawn");
            assert!(!p.1);
            mirrored += usize::from(f.1);
            total += 1;
        }
    }
    // 200 fair coin flips: 100 ± 7 expected.
    assert!(
        (70..=130).contains(&mirrored),
        "{mirrored} of {total} mirrored"
    );
}

#[test]
fn loader_resumed_at_step_k_continues_exactly_where_a_full_run_is() {
    let ds = Arc::new(toy(7));
    let cfg = LoaderConfig {
        batch_size: 3,
        seed: 11,
        hflip: true,
        start_step: 0,
        prefetch: 2,
    };
    let full: Vec<Batch> = Loader::spawn(ds.clone(), cfg.clone()).take(9).collect();
    let mut resumed = Loader::spawn(
        ds.clone(),
        LoaderConfig {
            start_step: 5,
            prefetch: 1,
            ..cfg
        },
    );
    assert_eq!(resumed.next_step(), 5);
    for want in &full[5..] {
        assert_eq!(&resumed.next_batch(), want);
    }
    for (s, b) in full.iter().enumerate() {
        assert_eq!(b.step, s as u64);
        assert_eq!(b, &make_batch(&ds, 11, s as u64, 3, true));
    }
}

#[test]
fn dropping_a_loader_stops_its_thread_even_when_blocked() {
    let ds = Arc::new(toy(5));
    let cfg = LoaderConfig {
        batch_size: 2,
        seed: 0,
        hflip: false,
        start_step: 0,
        prefetch: 1,
    };
    drop(Loader::spawn(ds.clone(), cfg.clone())); // never read
    let mut l = Loader::spawn(ds.clone(), LoaderConfig { prefetch: 0, ..cfg });
    l.next_batch();
    std::thread::sleep(std::time::Duration::from_millis(20)); // let it block on the next send
    drop(l);
}

// ---------------------------------------------------------------------------------------------
// Spec parsing and validation

#[test]
fn spec_strings_parse_and_print_back() {
    for s in ["synthetic", "folder:/a/b", "mnist:/m", "cifar10:rel/c"] {
        let spec: DataSpec = s.parse().unwrap();
        assert_eq!(spec.to_string(), s);
    }
    assert_eq!(
        "synthetic".parse::<DataSpec>().unwrap(),
        DataSpec::Synthetic
    );
    assert_eq!(
        "mnist:/m".parse::<DataSpec>().unwrap(),
        DataSpec::Mnist("/m".into())
    );
    assert!("folder:".parse::<DataSpec>().is_err());
    assert!("".parse::<DataSpec>().is_err());
    let missing = "/definitely/not/here-ddpm";
    let err = missing.parse::<DataSpec>().unwrap_err().to_string();
    assert!(err.contains(missing), "{err}");
}

#[test]
fn bare_paths_are_recognised_by_content() {
    let dir = scratch("detect");
    let (m, c, f) = (dir.join("m"), dir.join("c"), dir.join("f"));
    fs::create_dir_all(m.join("raw")).unwrap();
    fs::write(m.join("raw/train-images-idx3-ubyte.gz"), b"").unwrap();
    fs::create_dir_all(c.join("cifar-10-batches-bin")).unwrap();
    fs::write(c.join("cifar-10-batches-bin/data_batch_1.bin"), b"").unwrap();
    fs::create_dir_all(&f).unwrap();
    let parse = |p: &Path| p.to_str().unwrap().parse::<DataSpec>().unwrap();
    assert_eq!(parse(&m), DataSpec::Mnist(m.clone()));
    assert_eq!(parse(&c), DataSpec::Cifar10(c.clone()));
    assert_eq!(parse(&f), DataSpec::Folder(f.clone()));
    let round = parse(&m).to_string().parse::<DataSpec>().unwrap();
    assert_eq!(round, DataSpec::Mnist(m.clone()));
    fs::write(dir.join("notes.txt"), b"x").unwrap();
    let err = dir.join("notes.txt").to_str().unwrap().parse::<DataSpec>();
    assert!(err.unwrap_err().to_string().contains("notes.txt"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_geometry_is_refused_with_a_clear_message() {
    let err = load(&DataSpec::Synthetic, 2, 3, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("size") && err.contains('2'), "{err}");
    let err = load(&DataSpec::Synthetic, 16, 2, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("channels") && err.contains('2'), "{err}");
    assert!(Dataset::new("x", 1, 4, vec![0; 15], None, vec![]).is_err());
    assert!(Dataset::new("x", 1, 4, vec![], None, vec![]).is_err());
    assert!(Dataset::new("x", 1, 4, vec![0; 32], Some(vec![0]), vec!["a".into()]).is_err());
    assert!(Dataset::new("x", 1, 4, vec![0; 16], Some(vec![1]), vec!["a".into()]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Synthetic shapes

fn pixel(ds: &Dataset, i: usize, c: usize, y: usize, x: usize) -> u8 {
    ds.image(i)[(c * ds.size + y) * ds.size + x]
}

/// Guesses the shape from its silhouette alone: fill ratio of the bounding box (square ≈ 1,
/// disk ≈ π/4, cross ≈ 0.59, triangle ≈ ½) and whether it is much narrower a quarter of the way
/// down than a quarter of the way up (only the triangle, by a factor of 3).
fn classify(ds: &Dataset, i: usize) -> &'static str {
    let s = ds.size;
    let lit = |y: usize, x: usize| (0..ds.channels).any(|c| pixel(ds, i, c, y, x) > 100);
    let cells: Vec<(usize, usize)> = (0..s)
        .flat_map(|y| (0..s).map(move |x| (y, x)))
        .filter(|&(y, x)| lit(y, x))
        .collect();
    let (y0, y1) = (
        cells.iter().map(|c| c.0).min().unwrap(),
        cells.iter().map(|c| c.0).max().unwrap(),
    );
    let (x0, x1) = (
        cells.iter().map(|c| c.1).min().unwrap(),
        cells.iter().map(|c| c.1).max().unwrap(),
    );
    let row_width = |y: usize| (x0..=x1).filter(|&x| lit(y, x)).count();
    let fill = cells.len() as f64 / ((y1 - y0 + 1) * (x1 - x0 + 1)) as f64;
    let quarter = (y1 - y0) / 4;
    if 2 * row_width(y0 + quarter) < row_width(y1 - quarter) {
        "triangle"
    } else if fill > 0.9 {
        "square"
    } else if fill > 0.69 {
        "disk"
    } else {
        "cross"
    }
}

#[test]
fn synthetic_set_is_deterministic_balanced_and_recognisable() {
    let t = std::time::Instant::now();
    let ds = load(&DataSpec::Synthetic, 32, 3, false).unwrap();
    let elapsed = t.elapsed();
    assert_eq!(ds.name, "synthetic");
    assert_eq!((ds.channels, ds.size), (3, 32));
    assert!(ds.len() >= 1000, "{}", ds.len());
    assert_eq!(ds, load(&DataSpec::Synthetic, 32, 3, false).unwrap());
    // Far below this even unoptimised; the real bound (well under a second) is for release builds.
    assert!(elapsed.as_secs_f64() < 10.0, "{elapsed:?}");

    assert_eq!(ds.num_classes(), 4);
    let labels = ds.labels.as_ref().unwrap();
    let mut counts = [0usize; 4];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let quarter = ds.len() / 4;
    for c in counts {
        assert!(c.abs_diff(quarter) <= quarter / 5, "{counts:?}");
    }

    let mut colours: Vec<Vec<[u8; 3]>> = vec![Vec::new(); 4];
    let mut wrong = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        // Middle lit, corners black.
        let centre = (15..=17)
            .flat_map(|y| (15..=17).map(move |x| (y, x)))
            .map(|(y, x)| (0..3).map(|c| pixel(&ds, i, c, y, x)).max().unwrap())
            .max()
            .unwrap();
        assert!(centre > 100, "image {i}: centre {centre}");
        for (y, x) in [(0, 0), (0, 31), (31, 0), (31, 31)] {
            assert_eq!(
                (0..3).map(|c| pixel(&ds, i, c, y, x)).max(),
                Some(0),
                "image {i}"
            );
        }
        // The brightest pixel shows the class colour.
        let brightest = (0..32 * 32)
            .map(|p| [0, 1, 2].map(|c| pixel(&ds, i, c, p / 32, p % 32)))
            .max_by_key(|rgb| rgb.iter().map(|&v| v as u32).sum::<u32>())
            .unwrap();
        let class = label as usize;
        colours[class].push(brightest);
        if classify(&ds, i) != ds.class_names[class] {
            wrong.push((i, classify(&ds, i), ds.class_names[class].clone()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misclassified, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Each class has one colour, and the four colours are far apart.
    let colour: Vec<[u8; 3]> = colours
        .iter()
        .map(|cs| {
            assert!(cs.iter().all(|c| c == &cs[0]), "{:?}", &cs[..4]);
            cs[0]
        })
        .collect();
    for a in 0..4 {
        for b in 0..a {
            let far = (0..3).any(|c| colour[a][c].abs_diff(colour[b][c]) >= 60);
            assert!(
                far,
                "classes {a} and {b}: {:?} vs {:?}",
                colour[a], colour[b]
            );
        }
    }
}

#[test]
fn synthetic_grey_keeps_the_classes_apart_at_small_sizes() {
    let ds = load(&DataSpec::Synthetic, 8, 1, false).unwrap();
    assert_eq!((ds.channels, ds.size, ds.image(0).len()), (1, 8, 64));
    let brightest: Vec<u8> = (0..4u32)
        .map(|class| {
            (0..ds.len())
                .filter(|&i| ds.label(i) == Some(class))
                .map(|i| *ds.image(i).iter().max().unwrap())
                .max()
                .unwrap()
        })
        .collect();
    for a in 0..4 {
        for b in 0..a {
            assert!(brightest[a].abs_diff(brightest[b]) >= 8, "{brightest:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Image folders

fn write_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// The colour of pixel (y, x) of image `i`, channels 3.
fn rgb(ds: &Dataset, i: usize, y: usize, x: usize) -> [u8; 3] {
    [0, 1, 2].map(|c| pixel(ds, i, c, y, x))
}

fn near(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(&p, q)| p.abs_diff(q) <= tol)
}

#[test]
fn folder_with_class_subfolders_loads_in_sorted_order_with_labels() {
    let dir = scratch("folder");
    // 40×20, four bands of 10 columns: red, green, blue, white. Scaled to 20×10 and centre
    // cropped to 10×10, only green (left half) and blue (right half) remain; squashing would
    // keep all four bands, a left crop red and green.
    let bands = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
    write_rgb(&dir.join("cat/a.png"), 40, 20, |x, _| {
        bands[x as usize / 10]
    });
    write_rgb(&dir.join("cat/B.JPG"), 30, 30, |_, _| [128, 128, 128]);
    // Half opaque green, half fully transparent white: transparency ends up black.
    let c = image::RgbaImage::from_fn(20, 20, |x, _| {
        image::Rgba(if x < 10 {
            [0, 255, 0, 255]
        } else {
            [255, 255, 255, 0]
        })
    });
    fs::create_dir_all(dir.join("dog/sub")).unwrap();
    c.save(dir.join("dog/c.png")).unwrap();
    write_rgb(&dir.join("dog/sub/d.bmp"), 10, 10, |_, _| [10, 20, 30]);
    // Skipped: hidden files and folders, other extensions.
    fs::write(dir.join("dog/.hidden.png"), b"garbage").unwrap();
    fs::create_dir_all(dir.join(".git")).unwrap();
    fs::write(dir.join(".git/x.png"), b"garbage").unwrap();
    fs::write(dir.join("dog/notes.txt"), b"not an image").unwrap();

    let spec = DataSpec::Folder(dir.clone());
    let ds = load(&spec, 10, 3, false).unwrap();
    assert_eq!(ds.name, format!("folder:{}", dir.display()));
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.class_names, ["cat", "dog"]);
    assert_eq!(ds.labels.as_deref(), Some(&[0, 0, 1, 1][..]));
    // B.JPG sorts before a.png (byte order): image 0 is the grey JPEG.
    for y in 0..10 {
        for x in 0..10 {
            assert!(
                near(rgb(&ds, 0, y, x), [128, 128, 128], 4),
                "jpeg ({y},{x})"
            );
        }
        for x in 0..4 {
            assert!(
                near(rgb(&ds, 1, y, x), [0, 255, 0], 40),
                "{:?}",
                rgb(&ds, 1, y, x)
            );
            assert!(
                near(rgb(&ds, 2, y, x), [0, 255, 0], 40),
                "{:?}",
                rgb(&ds, 2, y, x)
            );
        }
        for x in 6..10 {
            assert!(
                near(rgb(&ds, 1, y, x), [0, 0, 255], 40),
                "{:?}",
                rgb(&ds, 1, y, x)
            );
            assert!(
                near(rgb(&ds, 2, y, x), [0, 0, 0], 40),
                "{:?}",
                rgb(&ds, 2, y, x)
            );
        }
        for x in 0..10 {
            assert_eq!(rgb(&ds, 3, y, x), [10, 20, 30], "bmp is already 10×10");
        }
    }

    // Grey: Rec. 601 luma of (10, 20, 30) is 18.15.
    let grey = load(&spec, 10, 1, false).unwrap();
    assert_eq!(grey.channels, 1);
    assert!(grey.image(3).iter().all(|&v| v.abs_diff(18) <= 1));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_without_two_class_subfolders_is_unlabeled() {
    let dir = scratch("flat");
    write_rgb(&dir.join("one.png"), 8, 8, |_, _| [1, 2, 3]);
    write_rgb(&dir.join("only/two.gif"), 8, 8, |_, _| [200, 200, 200]);
    let ds = load(&DataSpec::Folder(dir.clone()), 8, 3, false).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels, None);
    assert_eq!(ds.num_classes(), 0);
    assert!(ds.class_names.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

/// A fresh directory holding a good 8×8 image `a-good.png` and `bytes` as `name` (sorted after
/// it), loaded at size 8 in RGB: the error, if any, must be about `name`.
fn load_beside_a_good_image(test: &str, name: &str, bytes: &[u8]) -> Result<Dataset, DataError> {
    let dir = scratch(test);
    write_rgb(&dir.join("a-good.png"), 8, 8, |_, _| [1, 2, 3]);
    fs::write(dir.join(name), bytes).unwrap();
    let out = load(&DataSpec::Folder(dir.clone()), 8, 3, false);
    fs::remove_dir_all(&dir).unwrap();
    out
}

/// The error message of [`load_beside_a_good_image`], checked to be a [`DataError::Format`]
/// that starts with the file's path.
fn format_error(test: &str, name: &str, bytes: &[u8]) -> String {
    let err = load_beside_a_good_image(test, name, bytes).unwrap_err();
    match &err {
        DataError::Format { path, .. } => assert!(path.ends_with(name), "{err}"),
        _ => panic!("expected a format error about {name}, got {err:?}"),
    }
    let msg = err.to_string();
    assert!(!msg.contains("a-good.png"), "{msg}");
    msg
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `img` encoded in `format` by the `image` crate.
fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A 64×64 JPEG of smooth gradients, enough compressed data to cut in the middle.
fn gradient_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(4 * x) as u8, (4 * y) as u8, (2 * (x + y)) as u8])
    });
    encode(img.into(), image::ImageFormat::Jpeg)
}

/// Offset just past the first start-of-scan header of a JPEG: where its compressed data begins.
fn scan_data_start(jpeg: &[u8]) -> usize {
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]))
}

/// Corrupt, empty, mislabelled and unsupported files each end the load with an error naming the
/// file and what was expected, never with a silently wrong or skipped image.
#[test]
fn unreadable_image_files_are_refused_naming_the_file_and_the_problem() {
    let msg = format_error("zero", "empty.png", b"");
    assert!(
        msg.contains("empty (0 bytes)") && msg.contains("PNG, JPEG"),
        "{msg}"
    );

    // Text with an image extension: its first bytes are shown.
    let msg = format_error("text", "notes.png", b"this is not a png at all");
    assert!(
        msg.contains("not a PNG, JPEG, BMP or GIF image") && msg.contains("74 68 69 73"),
        "{msg}"
    );

    // Random bytes (a fixed LCG stream, first byte 0x5d: no format's magic number).
    let mut x = 12345u32;
    let noise: Vec<u8> = (0..300)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 24) as u8
        })
        .collect();
    let msg = format_error("noise", "noise.jpg", &noise);
    assert!(msg.contains("not a PNG, JPEG, BMP or GIF image"), "{msg}");

    // Real images of formats this build cannot read, named .png (made by Pillow).
    for (file, kind) in [("webp_named.png", "WEBP"), ("tiff_named.png", "TIFF")] {
        let msg = format_error("unsupported", file, &fixture(file));
        assert!(
            msg.contains(&format!("is in {kind} format")) && msg.contains("not supported"),
            "{msg}"
        );
    }

    // PNG, BMP and GIF files cut in half: the decoder's own error, naming the file.
    let img =
        image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 9]));
    for (format, name) in [
        (image::ImageFormat::Png, "cut.png"),
        (image::ImageFormat::Bmp, "cut.bmp"),
        (image::ImageFormat::Gif, "cut.gif"),
    ] {
        let bytes = encode(img.clone().into(), format);
        let err = load_beside_a_good_image("cut", name, &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("cannot decode the image"),
            "{msg}"
        );
    }
}

/// The JPEG decoder fills what a truncated file lacks with grey and reports success, so a
/// JPEG must run to its end-of-image marker: cut in its compressed data, or missing only the
/// final marker, it is refused. Bytes after the marker (some cameras append data) are fine.
#[test]
fn truncated_jpegs_are_refused_but_trailing_bytes_are_not() {
    let jpeg = gradient_jpeg();
    let start = scan_data_start(&jpeg);
    for cut in [start + (jpeg.len() - start) / 2, jpeg.len() - 2] {
        let msg = format_error("jpeg-cut", "cut.jpg", &jpeg[..cut]);
        assert!(
            msg.contains("end-of-image marker (FF D9)")
                && msg.contains(&format!("ends after {cut} bytes")),
            "{msg}"
        );
    }
    // A progressive file loses its last refinement scans.
    let prog = fixture("progressive.jpg");
    let msg = format_error("prog-cut", "prog.jpg", &prog[..prog.len() * 3 / 4]);
    assert!(msg.contains("end-of-image marker"), "{msg}");

    let grey = encode(
        image::GrayImage::from_pixel(8, 8, image::Luma([200])).into(),
        image::ImageFormat::Jpeg,
    );
    let mut trailing = grey.clone();
    trailing.extend_from_slice(b"\0\0\xff\xd8 appended by a phone");
    let ds = load_beside_a_good_image("jpeg-trailing", "trailing.jpg", &trailing).unwrap();
    assert_eq!(ds.len(), 2);
    assert!(
        ds.image(1).iter().all(|&v| v.abs_diff(200) <= 2),
        "{:?}",
        ds.image(1)
    );
}

/// Empty folders, folders with no image files, and missing folders are named.
#[test]
fn empty_folder_folder_without_images_and_missing_folder_are_named() {
    let empty = scratch("empty");
    let err = load(&DataSpec::Folder(empty.clone()), 8, 3, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("no images found"),
        "{err}"
    );

    // Only files with other extensions (and a hidden image, which is skipped).
    fs::write(empty.join("readme.txt"), b"no images here").unwrap();
    fs::write(empty.join("labels.csv"), b"a,b").unwrap();
    write_rgb(&empty.join(".hidden.png"), 8, 8, |_, _| [1, 2, 3]);
    let err = load(&DataSpec::Folder(empty.clone()), 8, 3, false).unwrap_err();
    assert!(matches!(err, DataError::NoImages { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("png/jpg/jpeg/bmp/gif"),
        "{err}"
    );

    let missing = empty.join("nope");
    let err = load(&DataSpec::Folder(missing.clone()), 8, 3, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    fs::remove_dir_all(&empty).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Image formats and colour conversion. The fixtures are made by scripts/make_image_fixtures.py
// (Pillow); the colours below are the ones it paints, so the decoded pixels are compared with
// an independent reference, not with our own earlier output.

/// Quadrant colours of the 16×16 fixtures, in the order top-left, top-right, bottom-left,
/// bottom-right.
const PALETTE: [[u8; 3]; 4] = [[230, 40, 20], [10, 90, 250], [0, 200, 0], [250, 240, 60]];
const PALETTE_ALPHA: [u8; 4] = [255, 0, 128, 255];
/// Ink amounts (C, M, Y, K), 0 = none.
const CMYK: [[u8; 4]; 4] = [
    [0, 0, 0, 0],
    [255, 0, 0, 0],
    [0, 128, 255, 0],
    [40, 80, 160, 100],
];
const GREYS: [u8; 4] = [0, 60, 170, 255];
/// Left-to-right bands of progressive.jpg.
const BANDS: [[u8; 3]; 4] = [[200, 30, 30], [30, 180, 60], [40, 60, 220], [235, 235, 235]];

/// Loads one file (bytes) as the only image of a fresh folder at its own size 16.
fn load_single(test: &str, name: &str, bytes: &[u8], channels: usize) -> Dataset {
    let dir = scratch(test);
    fs::write(dir.join(name), bytes).unwrap();
    let ds = load(&DataSpec::Folder(dir.clone()), 16, channels, false)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!((ds.len(), ds.size, ds.channels), (1, 16, channels));
    ds
}

/// Which quadrant of a 16×16 image (y, x) lies in.
fn quadrant(y: usize, x: usize) -> usize {
    (y / 8) * 2 + x / 8
}

/// Checks every pixel of image 0 against `want(y, x)` (RGB), within `tol` per channel.
fn assert_pixels(ds: &Dataset, what: &str, tol: u8, want: impl Fn(usize, usize) -> [u8; 3]) {
    for y in 0..ds.size {
        for x in 0..ds.size {
            let got = rgb(ds, 0, y, x);
            assert!(
                near(got, want(y, x), tol),
                "{what} ({y},{x}): got {got:?}, want {:?}",
                want(y, x)
            );
        }
    }
}

/// Grey with Rec. 601 weights (PIL's `convert("L")`), computed here in floating point.
fn luma_f(c: [u8; 3]) -> u8 {
    (0.299 * f64::from(c[0]) + 0.587 * f64::from(c[1]) + 0.114 * f64::from(c[2])).round() as u8
}

/// Checks every pixel of a grey image 0 against the luma of `want(y, x)`.
fn assert_grey(ds: &Dataset, what: &str, tol: u8, want: impl Fn(usize, usize) -> [u8; 3]) {
    for y in 0..ds.size {
        for x in 0..ds.size {
            let got = pixel(ds, 0, 0, y, x);
            let w = luma_f(want(y, x));
            assert!(
                got.abs_diff(w) <= tol,
                "{what} grey ({y},{x}): got {got}, want {w}"
            );
        }
    }
}

/// `v` composited over black with opacity `a`.
fn over_black(v: u8, a: u8) -> u8 {
    (f64::from(v) * f64::from(a) / 255.0).round() as u8
}

/// Palette PNGs (2 bits per pixel here) are expanded to their colours; tRNS transparency,
/// per palette entry, is composited over black like any alpha.
#[test]
fn palette_pngs_expand_to_their_colours_with_trns_over_black() {
    let ds = load_single("palette", "palette.png", &fixture("palette.png"), 3);
    assert_pixels(&ds, "palette", 0, |y, x| PALETTE[quadrant(y, x)]);
    let grey = load_single("palette-grey", "palette.png", &fixture("palette.png"), 1);
    assert_grey(&grey, "palette", 1, |y, x| PALETTE[quadrant(y, x)]);

    let ds = load_single("trns", "palette_trns.png", &fixture("palette_trns.png"), 3);
    assert_pixels(&ds, "palette+tRNS", 1, |y, x| {
        let q = quadrant(y, x);
        PALETTE[q].map(|v| over_black(v, PALETTE_ALPHA[q]))
    });
    // The fully transparent quadrant is black, the half transparent one half as bright.
    assert_eq!(rgb(&ds, 0, 2, 12), [0, 0, 0]);
    assert_eq!(rgb(&ds, 0, 12, 2)[1], 100);
}

/// 16-bit PNGs (RGB and grey) are rounded to the nearest 8-bit value, v / 257; taking the low
/// byte, or reading the samples little-endian, would give other values.
#[test]
fn sixteen_bit_pngs_are_rounded_to_eight_bits() {
    // Left half, right half: 16-bit sample → nearest 8-bit value.
    // 65535 → 255, 1000 → 3.89 → 4, 32896 → 128, 0 → 0, 40000 → 155.6 → 156, 20000 → 77.8 → 78.
    let left16 = [65535u16, 1000, 32896];
    let right16 = [0u16, 40000, 20000];
    let (left8, right8) = ([255u8, 4, 128], [0u8, 156, 78]);
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(16, 16, |x, _| {
        image::Rgb(if x < 8 { left16 } else { right16 })
    });
    let png = encode(img.into(), image::ImageFormat::Png);
    assert_eq!(
        image::load_from_memory(&png).unwrap().color(),
        image::ColorType::Rgb16,
        "the test file must really be 16-bit"
    );
    let ds = load_single("rgb16", "rgb16.png", &png, 3);
    assert_pixels(&ds, "rgb16", 0, |_, x| if x < 8 { left8 } else { right8 });

    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(16, 16, |x, _| {
        image::Luma([if x < 8 { 1000 } else { 40000 }])
    });
    let png = encode(img.into(), image::ImageFormat::Png);
    assert_eq!(
        image::load_from_memory(&png).unwrap().color(),
        image::ColorType::L16
    );
    let ds = load_single("l16", "l16.png", &png, 3);
    assert_pixels(&ds, "l16", 0, |_, x| [if x < 8 { 4 } else { 156 }; 3]);
    let ds = load_single("l16-grey", "l16.png", &png, 1);
    assert_grey(&ds, "l16", 0, |_, x| [if x < 8 { 4 } else { 156 }; 3]);
}

/// Partial transparency in RGBA and grey+alpha PNGs is composited over black.
#[test]
fn rgba_and_grey_alpha_pngs_are_composited_over_black() {
    let img = image::RgbaImage::from_fn(16, 16, |x, _| {
        image::Rgba(if x < 8 {
            [200, 100, 50, 128]
        } else {
            [20, 40, 250, 255]
        })
    });
    let ds = load_single(
        "rgba",
        "rgba.png",
        &encode(img.into(), image::ImageFormat::Png),
        3,
    );
    // 200·128/255 = 100.4, 100·128/255 = 50.2, 50·128/255 = 25.1
    assert_pixels(&ds, "rgba", 1, |_, x| {
        if x < 8 {
            [100, 50, 25]
        } else {
            [20, 40, 250]
        }
    });

    let img = image::GrayAlphaImage::from_fn(16, 16, |x, _| {
        image::LumaA(if x < 8 { [200, 64] } else { [90, 255] })
    });
    let png = encode(img.into(), image::ImageFormat::Png);
    // 200·64/255 = 50.2
    let ds = load_single("la", "la.png", &png, 3);
    assert_pixels(&ds, "grey+alpha", 1, |_, x| {
        [if x < 8 { 50 } else { 90 }; 3]
    });
    let ds = load_single("la-grey", "la.png", &png, 1);
    assert_grey(&ds, "grey+alpha", 1, |_, x| {
        [if x < 8 { 50 } else { 90 }; 3]
    });
}

/// RGB of a CMYK ink mix: each ink and the black remove light independently (Pillow's and the
/// browsers' conversion), computed here from the ink amounts the fixture script painted.
fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    [c, m, y].map(|v| ((255.0 - f64::from(v)) * (255.0 - f64::from(k)) / 255.0).round() as u8)
}

/// CMYK JPEGs are converted to RGB: as Pillow writes them (Adobe APP14 marker, transform 0,
/// inverted samples), without the marker (4 components are CMYK, read with the same Adobe
/// polarity, as Pillow and browsers do), and as YCCK (transform 2, what Photoshop writes).
#[test]
fn cmyk_and_ycck_jpegs_are_converted_to_rgb() {
    for file in ["cmyk_adobe.jpg", "cmyk_no_adobe.jpg", "ycck_adobe.jpg"] {
        let want = |y, x| cmyk_to_rgb(CMYK[quadrant(y, x)]);
        let ds = load_single("cmyk", file, &fixture(file), 3);
        assert_pixels(&ds, file, 3, want);
        // Spot values, worked by hand: cyan ink alone, and the mixed quadrant
        // (215·155/255, 175·155/255, 95·155/255) = (130.7, 106.4, 57.7).
        assert!(near(rgb(&ds, 0, 4, 12), [0, 255, 255], 3), "{file}");
        assert!(near(rgb(&ds, 0, 12, 12), [131, 106, 58], 3), "{file}");
        let grey = load_single("cmyk-grey", file, &fixture(file), 1);
        assert_grey(&grey, file, 3, want);
    }
}

/// One-component (grey) JPEGs load as grey, replicated into RGB.
#[test]
fn grey_jpeg_loads_its_grey_levels() {
    let ds = load_single("grey-jpeg", "grey.jpg", &fixture("grey.jpg"), 3);
    assert_pixels(&ds, "grey.jpg", 2, |y, x| [GREYS[quadrant(y, x)]; 3]);
    let ds = load_single("grey-jpeg-1", "grey.jpg", &fixture("grey.jpg"), 1);
    assert_grey(&ds, "grey.jpg", 2, |y, x| [GREYS[quadrant(y, x)]; 3]);
}

/// Progressive JPEGs are decoded through all their scans: the 4-pixel bands exist only in the
/// AC refinements (each 8×8 block holds two bands), so a DC-only decode would blend them.
#[test]
fn progressive_jpeg_decodes_all_its_scans() {
    let ds = load_single(
        "progressive",
        "progressive.jpg",
        &fixture("progressive.jpg"),
        3,
    );
    for y in 0..16 {
        for x in (0..16).filter(|x| matches!(x % 4, 1 | 2)) {
            let got = rgb(&ds, 0, y, x);
            assert!(near(got, BANDS[x / 4], 12), "({y},{x}): {got:?}");
        }
    }
}

/// Images are never enlarged silently: with `upscale` off, an image whose shorter side is below
/// the training size is an error naming the first one, its size, how many there are and what
/// to do; with it on, they are enlarged as before.
#[test]
fn folder_images_smaller_than_the_training_size_are_refused_unless_upscale() {
    let dir = scratch("small");
    write_rgb(&dir.join("a.png"), 40, 16, |_, _| [10, 200, 30]); // 16 high: exactly big enough
    write_rgb(&dir.join("b.png"), 12, 20, |_, _| [250, 20, 90]);
    write_rgb(&dir.join("c.png"), 30, 10, |_, _| [5, 5, 250]);
    write_rgb(&dir.join("d.png"), 64, 64, |_, _| [100, 100, 100]);
    let spec = DataSpec::Folder(dir.clone());

    let err = load(&spec, 16, 3, false).unwrap_err();
    match &err {
        DataError::Format { path, .. } => assert_eq!(path, &dir.join("b.png")),
        _ => panic!("{err:?}"),
    }
    let msg = err.to_string();
    for part in [
        "b.png: the image is 12×20",
        "training size 16×16",
        "2 of the 4 images",
        "--image-size 10 or smaller",
        "--upscale",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(!msg.contains("c.png"), "{msg}");

    // At 10 every image is big enough; upscaling is then not needed.
    assert_eq!(load(&spec, 10, 3, false).unwrap().len(), 4);

    let ds = load(&spec, 16, 3, true).unwrap();
    assert_eq!(ds.len(), 4);
    assert_pixels(&ds, "a.png", 1, |_, _| [10, 200, 30]);
    for (i, colour) in [(1, [250, 20, 90]), (2, [5, 5, 250])] {
        for (y, x) in [(0, 0), (8, 8), (15, 15)] {
            assert!(near(rgb(&ds, i, y, x), colour, 2), "image {i} ({y},{x})");
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// MNIST

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 6×6 images, pixel (y, x) of image i = 50·i + 6·y + x; labels 3, 1, 4.
fn mnist_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..3u32)
        .flat_map(|i| (0..36).map(move |p| (50 * i + p) as u8))
        .collect();
    let images = idx(0x803, &[3, 6, 6], &pixels);
    let labels = idx(0x801, &[3], &[3, 1, 4]);
    (images, labels, pixels)
}

#[test]
fn mnist_raw_and_gzip_load_the_same_known_pixels() {
    let dir = scratch("mnist");
    let (images, labels, pixels) = mnist_files();
    fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
    fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
    let gz = dir.join("gz/nested");
    fs::create_dir_all(&gz).unwrap();
    fs::write(gz.join("train-images-idx3-ubyte.gz"), gzip(&images)).unwrap();
    fs::write(gz.join("train-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();

    let ds = load(&DataSpec::Mnist(dir.clone()), 6, 1, false).unwrap();
    assert_eq!(ds.pixels, pixels);
    assert_eq!(ds.labels.as_deref(), Some(&[3, 1, 4][..]));
    assert_eq!(
        ds.class_names,
        (0..10).map(|d| d.to_string()).collect::<Vec<_>>()
    );

    // Found one level down, and through a bare path.
    let spec: DataSpec = dir.join("gz").to_str().unwrap().parse().unwrap();
    assert!(matches!(spec, DataSpec::Mnist(_)), "{spec:?}");
    let from_gz = load(&spec, 6, 1, false).unwrap();
    assert_eq!(from_gz.pixels, ds.pixels);
    assert_eq!(from_gz.labels, ds.labels);

    // The images file itself, in three channels: the grey plane three times.
    let rgb = load(
        &DataSpec::Mnist(dir.join("train-images-idx3-ubyte")),
        6,
        3,
        false,
    )
    .unwrap();
    for i in 0..3 {
        let want = &pixels[i * 36..(i + 1) * 36];
        assert_eq!(rgb.image(i), [want, want, want].concat());
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mnist_is_resized_to_the_requested_size() {
    let dir = scratch("mnist-resize");
    // 28×28: left half 0, right half 200. At 14×14 the halves stay halves.
    let img: Vec<u8> = (0..28 * 28)
        .map(|p| if p % 28 < 14 { 0 } else { 200 })
        .collect();
    fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx(0x803, &[1, 28, 28], &img),
    )
    .unwrap();
    fs::write(dir.join("train-labels-idx1-ubyte"), idx(0x801, &[1], &[9])).unwrap();
    let ds = load(&DataSpec::Mnist(dir.clone()), 14, 1, false).unwrap();
    assert_eq!(ds.image(0).len(), 14 * 14);
    for y in 0..14 {
        for x in 0..5 {
            assert!(pixel(&ds, 0, 0, y, x) <= 2, "({y},{x})");
            assert!(
                pixel(&ds, 0, 0, y, 13 - x).abs_diff(200) <= 2,
                "({y},{})",
                13 - x
            );
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mnist_errors_name_the_file_and_the_problem() {
    let dir = scratch("mnist-bad");
    let (images, labels, _) = mnist_files();
    let img_path = dir.join("train-images-idx3-ubyte");
    let lab_path = dir.join("train-labels-idx1-ubyte");
    let spec = DataSpec::Mnist(dir.clone());

    // No labels file.
    fs::write(&img_path, &images).unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte"), "{err}");

    // Truncated images.
    fs::write(&lab_path, &labels).unwrap();
    fs::write(&img_path, &images[..images.len() - 5]).unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte")
            && err.contains("108 bytes")
            && err.contains("103 bytes"),
        "{err}"
    );

    // Wrong magic.
    let mut wrong = images.clone();
    wrong[3] = 0x01;
    fs::write(&img_path, &wrong).unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("magic"),
        "{err}"
    );

    // Label count differs from the image count.
    fs::write(&img_path, &images).unwrap();
    fs::write(&lab_path, idx(0x801, &[2], &[1, 2])).unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(
        err.contains("train-labels-idx1-ubyte") && err.contains("2 labels"),
        "{err}"
    );

    // Corrupt gzip.
    fs::remove_file(&img_path).unwrap();
    fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        [0x1f, 0x8b, 8, 0, 1, 2, 3],
    )
    .unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("gzip"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The IDX checks not covered above, each through `load` so the message names the file: wrong
/// dimensions for the payload, extra bytes, a header cut short, a labels file with the images'
/// magic number or a short payload, a label above 9, and a valid gzip stream cut in half.
#[test]
fn mnist_dims_extra_bytes_label_problems_and_cut_gzip_are_errors() {
    let dir = scratch("mnist-bad2");
    let (images, labels, pixels) = mnist_files();
    let img_path = dir.join("train-images-idx3-ubyte");
    let lab_path = dir.join("train-labels-idx1-ubyte");
    let spec = DataSpec::Mnist(dir.clone());
    let err_with = |images: &[u8], labels: &[u8]| {
        fs::write(&img_path, images).unwrap();
        fs::write(&lab_path, labels).unwrap();
        load(&spec, 6, 1, false).unwrap_err().to_string()
    };

    // The header's dimensions do not match the 108 pixel bytes: 3 images of 7×6 need 126.
    let err = err_with(&idx(0x803, &[3, 7, 6], &pixels), &labels);
    assert!(
        err.contains("train-images-idx3-ubyte:")
            && err.contains("3 images of 7×6 (126 bytes)")
            && err.contains("108 bytes"),
        "{err}"
    );
    // A dimension of zero.
    let err = err_with(&idx(0x803, &[3, 0, 6], &pixels), &labels);
    assert!(
        err.contains("train-images-idx3-ubyte:") && err.contains("positive"),
        "{err}"
    );
    // Extra bytes after the images.
    let mut long = images.clone();
    long.extend_from_slice(&[0; 7]);
    let err = err_with(&long, &labels);
    assert!(
        err.contains("(108 bytes)") && err.contains("holds 115 bytes"),
        "{err}"
    );
    // A file shorter than its header.
    let err = err_with(&images[..10], &labels);
    assert!(
        err.contains("train-images-idx3-ubyte:") && err.contains("10 bytes, too short"),
        "{err}"
    );

    // Labels: the images' magic number, a short payload, extra bytes, a label that is no digit.
    let err = err_with(&images, &idx(0x803, &[3], &[3, 1, 4]));
    assert!(
        err.contains("train-labels-idx1-ubyte:")
            && err.contains("0x00000803")
            && err.contains("expected 0x00000801"),
        "{err}"
    );
    let err = err_with(&images, &idx(0x801, &[3], &[3, 1]));
    assert!(
        err.contains("train-labels-idx1-ubyte:")
            && err.contains("header says 3 labels")
            && err.contains("2 bytes"),
        "{err}"
    );
    let err = err_with(&images, &idx(0x801, &[3], &[3, 1, 4, 1]));
    assert!(
        err.contains("header says 3 labels") && err.contains("4 bytes"),
        "{err}"
    );
    let err = err_with(&images, &idx(0x801, &[3], &[3, 12, 4]));
    assert!(
        err.contains("train-labels-idx1-ubyte:") && err.contains("label 1 is 12"),
        "{err}"
    );

    // A gzip stream cut in half (valid header and start, no end).
    fs::remove_file(&img_path).unwrap();
    let gz = gzip(&images);
    let gz_path = dir.join("train-images-idx3-ubyte.gz");
    fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
    fs::write(&lab_path, &labels).unwrap();
    let err = load(&spec, 6, 1, false).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte.gz:") && err.contains("not a valid gzip file"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// MNIST digits are 6×6 here (28×28 in the real set): a larger training size is refused unless
/// `upscale`, naming the file and the native size; with it the digits are enlarged.
#[test]
fn mnist_larger_than_its_native_size_needs_upscale() {
    let dir = scratch("mnist-small");
    let (images, labels, _) = mnist_files();
    fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
    fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
    let spec = DataSpec::Mnist(dir.clone());
    let err = load(&spec, 8, 1, false).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        "train-images-idx3-ubyte: MNIST images are 6×6",
        "all 3 of them",
        "training size 8×8",
        "--image-size 6 or smaller",
        "--upscale",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // Enlarged 6 → 8: image 0's pixel (y, x) is 6·y + x, so it still rises down and across.
    let ds = load(&spec, 8, 1, true).unwrap();
    assert_eq!((ds.len(), ds.size), (3, 8));
    assert!(pixel(&ds, 0, 0, 0, 0) + 20 < pixel(&ds, 0, 0, 7, 0));
    assert!(pixel(&ds, 0, 0, 0, 0) + 3 < pixel(&ds, 0, 0, 0, 7));
    fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

/// A record: label, then R plane = 4·x, G plane = 4·y, B plane = `blue` everywhere.
fn cifar_record(label: u8, blue: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..1024).map(|p| (p % 32 * 4) as u8));
    r.extend((0..1024).map(|p| (p / 32 * 4) as u8));
    r.extend(std::iter::repeat_n(blue, 1024));
    r
}

#[test]
fn cifar_planes_labels_and_file_order_are_kept() {
    let dir = scratch("cifar");
    let b1: Vec<u8> = [(0, 200), (3, 201), (6, 202)]
        .iter()
        .flat_map(|&(l, b)| cifar_record(l, b))
        .collect();
    fs::write(dir.join("data_batch_1.bin"), &b1).unwrap();
    fs::write(dir.join("data_batch_2.bin"), cifar_record(9, 50)).unwrap();
    fs::write(dir.join("test_batch.bin"), cifar_record(1, 1)).unwrap(); // not training data

    let ds = load(&DataSpec::Cifar10(dir.clone()), 32, 3, false).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.labels.as_deref(), Some(&[0, 3, 6, 9][..]));
    assert_eq!(ds.class_names[3], "cat");
    assert_eq!(ds.class_names[9], "truck");
    for (i, blue) in [200u8, 201, 202, 50].into_iter().enumerate() {
        for (y, x) in [(0, 0), (5, 10), (31, 2), (17, 31)] {
            assert_eq!(
                rgb(&ds, i, y, x),
                [(4 * x) as u8, (4 * y) as u8, blue],
                "image {i} ({y},{x})"
            );
        }
    }

    // Luma at (5, 10): 0.299·40 + 0.587·20 + 0.114·200 = 46.5.
    let grey = load(&DataSpec::Cifar10(dir.clone()), 32, 1, false).unwrap();
    assert!(pixel(&grey, 0, 0, 5, 10).abs_diff(46) <= 1);

    // Resized: the constant blue plane stays constant, the red ramp still rises left to right.
    let small = load(&DataSpec::Cifar10(dir.clone()), 16, 3, false).unwrap();
    assert!(small.image(3)[2 * 256..]
        .iter()
        .all(|&v| v.abs_diff(50) <= 1));
    assert!(pixel(&small, 0, 0, 8, 2) + 20 < pixel(&small, 0, 0, 8, 13));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cifar_bad_length_bad_label_and_no_batches_are_errors() {
    let dir = scratch("cifar-bad");
    let spec = DataSpec::Cifar10(dir.clone());
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin"), "{err}");

    let mut rec = cifar_record(2, 0);
    rec.push(0);
    fs::write(dir.join("data_batch_1.bin"), &rec).unwrap();
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("3074") && err.contains("3073"),
        "{err}"
    );

    let mut two = cifar_record(2, 0);
    two.extend(cifar_record(11, 0));
    fs::write(dir.join("data_batch_1.bin"), &two).unwrap();
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("record 1") && err.contains("11"),
        "{err}"
    );

    // A record cut short, an empty batch, and a bad second batch after a good first one.
    let rec = cifar_record(2, 0);
    fs::write(dir.join("data_batch_1.bin"), &rec[..3000]).unwrap();
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin:") && err.contains("3000 bytes") && err.contains("3073"),
        "{err}"
    );
    fs::write(dir.join("data_batch_1.bin"), b"").unwrap();
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin:") && err.contains("holds 0 bytes"),
        "{err}"
    );
    fs::write(dir.join("data_batch_1.bin"), &rec).unwrap();
    fs::write(dir.join("data_batch_2.bin"), &rec[..RECORD_CUT]).unwrap();
    let err = load(&spec, 32, 3, false).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_2.bin:") && err.contains(&format!("{RECORD_CUT} bytes")),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// Where the bad second CIFAR batch above is cut.
const RECORD_CUT: usize = 1537;

/// CIFAR-10 images are 32×32: a larger training size is refused unless `upscale`, naming the
/// first batch file and the native size; with it the pictures are enlarged.
#[test]
fn cifar_larger_than_32_needs_upscale() {
    let dir = scratch("cifar-small");
    fs::write(dir.join("data_batch_1.bin"), cifar_record(4, 77)).unwrap();
    fs::write(dir.join("data_batch_2.bin"), cifar_record(5, 78)).unwrap();
    let spec = DataSpec::Cifar10(dir.clone());
    let msg = load(&spec, 40, 3, false).unwrap_err().to_string();
    for part in [
        "data_batch_1.bin: CIFAR-10 images are 32×32",
        "all 2 of them",
        "training size 40×40",
        "--image-size 32 or smaller",
        "--upscale",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    let ds = load(&spec, 40, 3, true).unwrap();
    assert_eq!((ds.len(), ds.size), (2, 40));
    // The constant blue plane stays 77 / 78 when enlarged.
    assert!(ds.image(0)[2 * 1600..].iter().all(|&v| v.abs_diff(77) <= 1));
    assert!(ds.image(1)[2 * 1600..].iter().all(|&v| v.abs_diff(78) <= 1));
    fs::remove_dir_all(&dir).unwrap();
}
