//! The built-in "shapes" dataset: procedurally drawn images of a few shape classes with
//! random colour, size, position and rotation over a noisy background. Every image is a
//! pure function of (`data.seed`, split, index), so the set needs no download and no disk.

use super::{seed, Dataset, Sample, SampleError};
use crate::config::DataConfig;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Class names in label order; `data.num_shapes` takes a prefix.
pub const CLASSES: [&str; 6] = ["circle", "square", "triangle", "cross", "ring", "bar"];

/// Which split of the shapes set; each draws from its own random stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `data.train_size` images, horizontally flipped with probability `data.augment.hflip`.
    Train,
    /// `data.val_size` images, never flipped.
    Val,
}

/// One split of the procedurally drawn shapes set.
pub struct Shapes {
    classes: Vec<String>,
    len: usize,
    size: u32,
    seed: u64,
    split: Split,
    hflip: f64,
}

impl Shapes {
    /// The `split` of `cfg`: its first `data.num_shapes` classes, `data.image_size` pixels
    /// square, seeded by `data.seed`.
    pub fn new(cfg: &DataConfig, split: Split) -> Shapes {
        Shapes {
            classes: CLASSES[..cfg.num_shapes]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            len: match split {
                Split::Train => cfg.train_size,
                Split::Val => cfg.val_size,
            },
            size: cfg.image_size,
            seed: cfg.seed,
            split,
            hflip: if split == Split::Train {
                cfg.augment.hflip
            } else {
                0.0
            },
        }
    }

    /// The label of `index`: classes are balanced and interleaved.
    pub fn label(&self, index: usize) -> i64 {
        (index % self.classes.len()) as i64
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        self.len
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_size(&self) -> u32 {
        self.size
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample, SampleError> {
        let label = self.label(index);
        let split = self.split as u64;
        let mut image = draw(
            label as usize,
            self.size as usize,
            &mut seed::rng(&[self.seed, split, index as u64]),
        );
        if self.hflip > 0.0 && rng.gen::<f64>() < self.hflip {
            flip_horizontal(&mut image, self.size as usize);
        }
        Ok(Sample { image, label })
    }
}

/// Mirrors an interleaved RGB image left to right, in place.
pub fn flip_horizontal(image: &mut [u8], width: usize) {
    for row in image.chunks_exact_mut(width * 3) {
        for x in 0..width / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (width - 1 - x) * 3 + c);
            }
        }
    }
}

/// Whether the point (u, v), in the shape's unit frame, lies inside shape `class`.
fn inside(class: usize, u: f32, v: f32) -> bool {
    match class {
        0 => u * u + v * v <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => {
            // Equilateral triangle inscribed in the unit circle, apex up (v grows downwards).
            let h = 3f32.sqrt() / 2.0;
            v <= 0.5 && v >= -1.0 + (u.abs() / h) * 1.5
        }
        3 => (u.abs() <= 0.28 && v.abs() <= 1.0) || (v.abs() <= 0.28 && u.abs() <= 1.0),
        4 => {
            let r2 = u * u + v * v;
            (0.3..=1.0).contains(&r2)
        }
        _ => u.abs() <= 1.0 && v.abs() <= 0.3,
    }
}

/// Draws one image of `class` at `size` x `size`.
fn draw(class: usize, size: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let bg: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.0..255.0));
    // A foreground colour clearly away from the background.
    let fg: [f32; 3] = loop {
        let c: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.0..255.0));
        let d2: f32 = c.iter().zip(&bg).map(|(a, b)| (a - b) * (a - b)).sum();
        if d2 > 100.0 * 100.0 {
            break c;
        }
    };
    let s = size as f32;
    let radius = rng.gen_range(0.22..0.42) * s;
    let cx = rng.gen_range(radius..s - radius);
    let cy = rng.gen_range(radius..s - radius);
    let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let noise = rng.gen_range(5.0..30.0f32);
    let mut image = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            // 2x2 supersampling for soft edges.
            let mut cover = 0.0;
            for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let dx = x as f32 + ox - cx;
                let dy = y as f32 + oy - cy;
                let u = (cos * dx + sin * dy) / radius;
                let v = (-sin * dx + cos * dy) / radius;
                if inside(class, u, v) {
                    cover += 0.25;
                }
            }
            let px = &mut image[(y * size + x) * 3..][..3];
            for c in 0..3 {
                let value = bg[c] * (1.0 - cover) + fg[c] * cover + rng.gen_range(-noise..noise);
                px[c] = value.clamp(0.0, 255.0) as u8;
            }
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(split: Split) -> Shapes {
        Shapes::new(
            &DataConfig {
                train_size: 40,
                val_size: 8,
                ..Default::default()
            },
            split,
        )
    }

    #[test]
    fn images_are_deterministic_and_splits_differ() {
        let (train, val) = (set(Split::Train), set(Split::Val));
        let mut r = seed::rng(&[0]);
        let a = train.get(3, &mut seed::rng(&[9])).unwrap();
        let b = train.get(3, &mut seed::rng(&[9])).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!(a.image.len(), 32 * 32 * 3);
        assert_ne!(a.image, val.get(3, &mut r).unwrap().image);
        assert_eq!(train.classes(), ["circle", "square", "triangle", "cross"]);
    }

    #[test]
    fn labels_are_balanced() {
        let train = set(Split::Train);
        let counts = (0..40).fold([0; 4], |mut c, i| {
            c[train.label(i) as usize] += 1;
            c
        });
        assert_eq!(counts, [10; 4]);
    }

    #[test]
    fn each_shape_covers_a_sensible_area() {
        // Count inside points on a grid: every class covers part, not all, of the frame.
        for class in 0..6 {
            let n = (0..100 * 100)
                .filter(|i| {
                    inside(
                        class,
                        (i % 100) as f32 / 50.0 - 1.0,
                        (i / 100) as f32 / 50.0 - 1.0,
                    )
                })
                .count();
            assert!(n > 1000 && n < 9000, "class {class}: {n}");
        }
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut img = vec![1, 1, 1, 2, 2, 2, 3, 3, 3];
        flip_horizontal(&mut img, 3);
        assert_eq!(img, vec![3, 3, 3, 2, 2, 2, 1, 1, 1]);
    }
}
