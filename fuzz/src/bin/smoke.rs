//! A stable fuzz driver, without coverage feedback: mutates the seed corpus with a seeded
//! RNG for a fixed time per target, calls the target on each input under `catch_unwind`,
//! and reports panics (saved under `artifacts/<target>/`) and slow inputs.
//!
//! ```text
//! cargo run --no-default-features --bin smoke -- [--seconds N] [--seed S] [TARGET...]
//! cargo run --no-default-features --bin smoke -- --make-seeds   # rewrites seeds/ (but pth)
//! ```
//! An abort or stack overflow cannot be caught: the driver then dies, and `--save-each`
//! writes every input to `artifacts/<target>/current` before running it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let mut seconds = 120u64;
    let mut seed = 0u64;
    let mut save_each = false;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed S"),
            "--save-each" => save_each = true,
            "--make-seeds" => return make_seeds(),
            name => names.push(name.to_string()),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Panics are reported by the driver, one line each.
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashed = false;
    for (name, target) in hondo_fuzz::TARGETS {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let seeds = read_seeds(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds in seeds/{name}");
        let stats = run(name, *target, &seeds, seconds, seed, save_each, root);
        println!(
            "{name}: {} inputs in {:.0} s ({} seeds), {} returned (a value or an error), {} \
             panics, slowest {:.3} s",
            stats.inputs,
            stats.elapsed.as_secs_f64(),
            seeds.len(),
            stats.ok,
            stats.panics,
            stats.slowest.as_secs_f64()
        );
        crashed |= stats.panics > 0;
    }
    if crashed {
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Stats {
    inputs: u64,
    ok: u64,
    panics: u64,
    slowest: Duration,
    elapsed: Duration,
}

fn read_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn run(
    name: &str,
    target: fn(&[u8]),
    seeds: &[Vec<u8>],
    seconds: u64,
    seed: u64,
    save_each: bool,
    root: &Path,
) -> Stats {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let artifacts = root.join("artifacts").join(name);
    let mut stats = Stats::default();
    let start = Instant::now();
    // The seeds first, unchanged; then mutants of seeds (and of earlier mutants).
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let base = &pool[rng.gen_range(0..pool.len())];
            let other = &seeds[rng.gen_range(0..seeds.len())];
            let rounds = 1 + rng.gen_range(0..4);
            let mut m = base.clone();
            for _ in 0..rounds {
                mutate(&mut m, other, &mut rng);
            }
            m
        };
        i += 1;
        if save_each {
            let _ = std::fs::create_dir_all(&artifacts);
            let _ = std::fs::write(artifacts.join("current"), &input);
        }
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t.elapsed();
        stats.inputs += 1;
        stats.slowest = stats.slowest.max(took);
        if took > Duration::from_secs(2) {
            let _ = std::fs::create_dir_all(&artifacts);
            let p = artifacts.join(format!("slow-{}", hash(&input)));
            let _ = std::fs::write(&p, &input);
            println!("{name}: slow input ({:.1} s) saved as {}", took.as_secs_f64(), p.display());
        }
        match result {
            Ok(()) => {
                stats.ok += 1;
                // Keep some mutants that got through, to mutate further (bounded pool).
                if pool.len() < 4096 && rng.gen_bool(0.05) {
                    pool.push(input);
                }
            }
            Err(payload) => {
                stats.panics += 1;
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let _ = std::fs::create_dir_all(&artifacts);
                let p = artifacts.join(format!("crash-{}", hash(&input)));
                let _ = std::fs::write(&p, &input);
                println!("{name}: PANIC {msg:?}, input saved as {}", p.display());
            }
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

fn hash(data: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(data);
    format!("{:016x}", h.finish())
}

/// Values that find off-by-one, sign and overflow bugs in lengths, counts and offsets.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 1,
];

fn mutate(m: &mut Vec<u8>, other: &[u8], rng: &mut ChaCha8Rng) {
    if m.is_empty() {
        m.extend_from_slice(&other[..other.len().min(64)]);
        if m.is_empty() {
            m.push(0);
        }
        return;
    }
    let len = m.len();
    match rng.gen_range(0..10) {
        // Flip a bit.
        0 => {
            let i = rng.gen_range(0..len);
            m[i] ^= 1 << rng.gen_range(0..8);
        }
        // Set a byte.
        1 => {
            let i = rng.gen_range(0..len);
            m[i] = [0, 0xff, 0x7f, 0x80, b'(', b'[', b'{', b'"', b'\n', rng.gen()][rng.gen_range(0..10)];
        }
        // Overwrite 1, 2, 4 or 8 bytes with an interesting integer (either endianness).
        2 => {
            let w = [1, 2, 4, 8][rng.gen_range(0..4)].min(len);
            let i = rng.gen_range(0..=len - w);
            let v = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            let b = if rng.gen() { v.to_le_bytes() } else { v.to_be_bytes() };
            m[i..i + w].copy_from_slice(&b[..w]);
        }
        // Delete a range.
        3 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(256));
            m.drain(i..i + n);
        }
        // Duplicate a range (repeats nest structures deeper).
        4 => {
            let i = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - i).min(64));
            let chunk = m[i..i + n].to_vec();
            let times = [1, 2, 16, 1000][rng.gen_range(0..4)];
            let at = rng.gen_range(0..=len);
            let rep: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
            m.splice(at..at, rep);
        }
        // Truncate.
        5 => m.truncate(rng.gen_range(0..len)),
        // Splice in a piece of another seed.
        6 if !other.is_empty() => {
            let j = rng.gen_range(0..other.len());
            let n = rng.gen_range(1..=(other.len() - j).min(256));
            let at = rng.gen_range(0..=len);
            m.splice(at..at, other[j..j + n].iter().copied());
        }
        // Replace a decimal number in text with a huge, negative or odd one.
        7 => {
            let i = rng.gen_range(0..len);
            if let Some(start) = (i..len).find(|&k| m[k].is_ascii_digit()) {
                let end = (start..len).find(|&k| !m[k].is_ascii_digit()).unwrap_or(len);
                let v = ["0", "-1", "1e309", "nan", "inf", "99999999999", "18446744073709551616", "4096", "1.5"][rng.gen_range(0..9)];
                m.splice(start..end, v.bytes());
            }
        }
        // Insert random bytes.
        _ => {
            let at = rng.gen_range(0..=len);
            let n = rng.gen_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            m.splice(at..at, bytes);
        }
    }
    // Keep inputs bounded (a few MB) so the pool stays small.
    m.truncate(4 << 20);
}

/// Writes the seeds that Rust can make: configs, a tiny hondo checkpoint (with EMA and
/// optimizer state), images. `seeds/pth` comes from `make_pth_seeds.py` (PyTorch).
fn make_seeds() {
    use hondo::checkpoint::{self, Meta};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    // Configs: the shipped ones and a tiny one with most sections.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for c in ["default.toml", "resnet152-finetune.toml"] {
        write("config", c, &std::fs::read(repo.join("configs").join(c)).unwrap());
    }
    write(
        "config",
        "tiny.toml",
        b"[model]\narch = \"small_cnn\"\nwidth = 4\nfreeze = [\"features.0\"]\n\
          [data]\nkind = \"shapes\"\nimage_size = 16\ntrain_size = 64\nval_size = 32\n\
          mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n[data.augment]\nscale = [0.5, 1.0]\n\
          [optimizer]\nkind = \"adamw\"\nlr = 0.001\n[[optimizer.groups]]\nprefixes = [\"classifier\"]\nlr_scale = 10.0\n\
          [schedule]\nwarmup_epochs = 0.5\n[train]\nepochs = 2\nbatch_size = 16\nema_decay = 0.9\n\
          [checkpoint]\nkeep_top_k = 2\n",
    );
    // A checkpoint that `restore` accepts: small_cnn of width 1, two classes.
    let mut cfg = hondo::config::Config::default();
    cfg.model.width = 1;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _model = hondo::models::Model::new(&vs.root(), &cfg.model, 2);
    let mut model: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let ema: Vec<(String, tch::Tensor)> =
        model.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
    let optimizer = vec![("classifier.weight.step".to_string(), tch::Tensor::from(3i64))];
    let meta = Meta {
        hondo_version: "0.1.0".into(),
        arch: "small_cnn".into(),
        num_classes: 2,
        classes: vec!["a".into(), "b".into()],
        image_size: 16,
        crop_fraction: 0.875,
        mean: [0.5; 3],
        std: [0.25; 3],
        epoch: 1,
        batch: 0,
        step: 4,
        metrics: [("val_acc".to_string(), 0.5)].into_iter().collect(),
        best: Some((0.5, 1)),
        epochs_without_improvement: 0,
        config: cfg.to_toml(),
        head: None,
    };
    let bytes = checkpoint::to_bytes_with_ema(&meta, &model, &optimizer, &ema).unwrap();
    write("safetensors", "checkpoint.safetensors", &bytes);
    let plain = hondo::tensor_io::serialize(&model[..2], Default::default()).unwrap();
    write("safetensors", "plain.safetensors", &plain);
    // Images: one of each format hondo decodes, 8 x 6 pixels.
    let img = image_of(8, 6);
    for (name, fmt) in [
        ("x.png", image::ImageFormat::Png),
        ("x.jpg", image::ImageFormat::Jpeg),
        ("x.bmp", image::ImageFormat::Bmp),
        ("x.webp", image::ImageFormat::WebP),
    ] {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, fmt).unwrap();
        write("image", name, &out.into_inner());
    }
    println!("seeds written under {}", root.display());
}

fn image_of(w: u32, h: u32) -> image::DynamicImage {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 128]));
    image::DynamicImage::ImageRgb8(img)
}
