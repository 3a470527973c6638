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
    let err = load(&DataSpec::Synthetic, 2, 3).unwrap_err().to_string();
    assert!(err.contains("size") && err.contains('2'), "{err}");
    let err = load(&DataSpec::Synthetic, 16, 2).unwrap_err().to_string();
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
    let ds = load(&DataSpec::Synthetic, 32, 3).unwrap();
    let elapsed = t.elapsed();
    assert_eq!(ds.name, "synthetic");
    assert_eq!((ds.channels, ds.size), (3, 32));
    assert!(ds.len() >= 1000, "{}", ds.len());
    assert_eq!(ds, load(&DataSpec::Synthetic, 32, 3).unwrap());
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
    let ds = load(&DataSpec::Synthetic, 8, 1).unwrap();
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
    let ds = load(&spec, 10, 3).unwrap();
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
    let grey = load(&spec, 10, 1).unwrap();
    assert_eq!(grey.channels, 1);
    assert!(grey.image(3).iter().all(|&v| v.abs_diff(18) <= 1));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_without_two_class_subfolders_is_unlabeled() {
    let dir = scratch("flat");
    write_rgb(&dir.join("one.png"), 8, 8, |_, _| [1, 2, 3]);
    write_rgb(&dir.join("only/two.gif"), 8, 8, |_, _| [200, 200, 200]);
    let ds = load(&DataSpec::Folder(dir.clone()), 8, 3).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels, None);
    assert_eq!(ds.num_classes(), 0);
    assert!(ds.class_names.is_empty());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_image_empty_folder_and_missing_folder_are_named_in_the_error() {
    let dir = scratch("bad");
    write_rgb(&dir.join("good.png"), 8, 8, |_, _| [1, 2, 3]);
    fs::write(dir.join("zz-broken.png"), b"this is not a png at all").unwrap();
    let err = load(&DataSpec::Folder(dir.clone()), 8, 3).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("zz-broken.png"), "{err}");

    let empty = scratch("empty");
    fs::write(empty.join("readme.txt"), b"no images here").unwrap();
    let err = load(&DataSpec::Folder(empty.clone()), 8, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("png"),
        "{err}"
    );

    let missing = dir.join("nope");
    let err = load(&DataSpec::Folder(missing.clone()), 8, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&empty).unwrap();
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

    let ds = load(&DataSpec::Mnist(dir.clone()), 6, 1).unwrap();
    assert_eq!(ds.pixels, pixels);
    assert_eq!(ds.labels.as_deref(), Some(&[3, 1, 4][..]));
    assert_eq!(
        ds.class_names,
        (0..10).map(|d| d.to_string()).collect::<Vec<_>>()
    );

    // Found one level down, and through a bare path.
    let spec: DataSpec = dir.join("gz").to_str().unwrap().parse().unwrap();
    assert!(matches!(spec, DataSpec::Mnist(_)), "{spec:?}");
    let from_gz = load(&spec, 6, 1).unwrap();
    assert_eq!(from_gz.pixels, ds.pixels);
    assert_eq!(from_gz.labels, ds.labels);

    // The images file itself, in three channels: the grey plane three times.
    let rgb = load(&DataSpec::Mnist(dir.join("train-images-idx3-ubyte")), 6, 3).unwrap();
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
    let ds = load(&DataSpec::Mnist(dir.clone()), 14, 1).unwrap();
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
    let err = load(&spec, 6, 1).unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte"), "{err}");

    // Truncated images.
    fs::write(&lab_path, &labels).unwrap();
    fs::write(&img_path, &images[..images.len() - 5]).unwrap();
    let err = load(&spec, 6, 1).unwrap_err().to_string();
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
    let err = load(&spec, 6, 1).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("magic"),
        "{err}"
    );

    // Label count differs from the image count.
    fs::write(&img_path, &images).unwrap();
    fs::write(&lab_path, idx(0x801, &[2], &[1, 2])).unwrap();
    let err = load(&spec, 6, 1).unwrap_err().to_string();
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
    let err = load(&spec, 6, 1).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte.gz") && err.contains("gzip"),
        "{err}"
    );
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

    let ds = load(&DataSpec::Cifar10(dir.clone()), 32, 3).unwrap();
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
    let grey = load(&DataSpec::Cifar10(dir.clone()), 32, 1).unwrap();
    assert!(pixel(&grey, 0, 0, 5, 10).abs_diff(46) <= 1);

    // Resized: the constant blue plane stays constant, the red ramp still rises left to right.
    let small = load(&DataSpec::Cifar10(dir.clone()), 16, 3).unwrap();
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
    let err = load(&spec, 32, 3).unwrap_err().to_string();
    assert!(err.contains("data_batch_1.bin"), "{err}");

    let mut rec = cifar_record(2, 0);
    rec.push(0);
    fs::write(dir.join("data_batch_1.bin"), &rec).unwrap();
    let err = load(&spec, 32, 3).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("3074") && err.contains("3073"),
        "{err}"
    );

    let mut two = cifar_record(2, 0);
    two.extend(cifar_record(11, 0));
    fs::write(dir.join("data_batch_1.bin"), &two).unwrap();
    let err = load(&spec, 32, 3).unwrap_err().to_string();
    assert!(
        err.contains("data_batch_1.bin") && err.contains("record 1") && err.contains("11"),
        "{err}"
    );
    fs::remove_dir_all(&dir).unwrap();
}
