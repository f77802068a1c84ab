//! `data.kind = "image_folder"`: one directory per class, as torchvision's `ImageFolder`.
//!
//! Either `root/train/<class>/...` and `root/val/<class>/...`, or `root/<class>/...` split by
//! `data.val_fraction` (per class, seeded by `data.seed`). Classes are the sorted
//! sub-directory names; files are found recursively and ordered as torchvision orders them:
//! by directory path, then by file name. Only paths are held in memory; images are read when
//! a worker asks for them.
//!
//! Links are followed, to files and to directories, but each directory is walked at most
//! once per class (tracked by device and inode): a link loop or a second link to the same
//! directory adds nothing, where torchvision's `os.walk(followlinks=True)` would loop.
//! Only regular files are samples: a FIFO, socket or device file (or a link to one) with an
//! image extension is refused when it is read (only regular files are read), so it is
//! skipped with a warning naming it, or stops the run under `data.on_error = "fail"`, as an undecodable
//! image does; no read ever blocks or exceeds 64 MiB.

use super::decode::decode_path_for_crop;
use super::transforms::{RgbRef, Transform};
use super::{seed, Dataset, Sample, SampleError, Splits};
use crate::config::DataConfig;
use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File extensions read, compared case-insensitively.
pub const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// Deepest directory nesting walked inside a class directory.
const MAX_DEPTH: usize = 32;

/// Image files and their labels, before any transform is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// `(file, label)` in torchvision's order.
    pub samples: Vec<(PathBuf, i64)>,
}

/// One split of an image folder: file paths, labels and the transform applied on read.
pub struct ImageFolder {
    classes: Vec<String>,
    samples: Vec<(PathBuf, i64)>,
    transform: Transform,
    max_side: u32,
}

impl ImageFolder {
    /// A split over `listing`, each file decoded (images with a side over `max_side` pixels
    /// rejected unread) and passed through `transform`.
    pub fn new(listing: Listing, transform: Transform, max_side: u32) -> ImageFolder {
        ImageFolder {
            classes: listing.classes,
            samples: listing.samples,
            transform,
            max_side,
        }
    }

    /// The files of this split with their labels.
    pub fn samples(&self) -> &[(PathBuf, i64)] {
        &self.samples
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_size(&self) -> u32 {
        self.transform.size()
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample, SampleError> {
        let (path, label) = &self.samples[index];
        // The crop is drawn from the header's size, so that a large JPEG is decoded only at
        // the scale the crop needs.
        let t = &self.transform;
        let d = decode_path_for_crop(path, self.max_side, t.size(), |w, h| t.region(w, h, rng))
            .map_err(|reason| SampleError {
                item: path.display().to_string(),
                reason,
            })?;
        Ok(Sample {
            image: t.apply_region(RgbRef::from(&d.image), d.region, rng),
            label: *label,
        })
    }
}

/// The train and val splits of `cfg.root`; every layout problem is reported here, before
/// training starts, naming the directory.
pub(crate) fn splits(cfg: &DataConfig) -> anyhow::Result<Splits> {
    let (train, val) = listings(Path::new(&cfg.root), cfg.val_fraction, cfg.seed)?;
    Ok(Splits {
        train: Arc::new(ImageFolder::new(
            train,
            Transform::train(cfg),
            cfg.max_image_side,
        )),
        val: Arc::new(ImageFolder::new(
            val,
            Transform::eval(cfg),
            cfg.max_image_side,
        )),
    })
}

/// The train and val listings of `root` (see the module doc for the two layouts).
pub(crate) fn listings(
    root: &Path,
    val_fraction: f64,
    seed: u64,
) -> anyhow::Result<(Listing, Listing)> {
    if !root.is_dir() {
        bail!("data.root {} is not a directory", root.display());
    }
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    if train_dir.is_dir() {
        let train = scan_dir(&train_dir, None)?;
        if val_dir.is_dir() {
            if val_fraction > 0.0 {
                bail!(
                    "{} exists and data.val_fraction = {val_fraction}: use one or the other",
                    val_dir.display()
                );
            }
            let val = scan_dir(&val_dir, Some(&train.classes))?;
            Ok((train, val))
        } else if val_fraction > 0.0 {
            Ok(split(train, val_fraction, seed))
        } else {
            bail!(
                "{} has no val/ directory: add one or set data.val_fraction",
                root.display()
            )
        }
    } else if val_fraction > 0.0 {
        Ok(split(scan_dir(root, None)?, val_fraction, seed))
    } else {
        bail!(
            "{} has no train/ directory: use root/train/<class>/ and root/val/<class>/, \
             or root/<class>/ with data.val_fraction > 0",
            root.display()
        )
    }
}

/// A class directory that [`scan`] found whose name is not one of the classes it was given;
/// callers that take the classes from elsewhere (a checkpoint) downcast to reword it.
#[derive(Debug, thiserror::Error)]
#[error(
    "class directory {} is not a training class (training classes: {classes:?})",
    .dir.display()
)]
pub struct UnknownClass {
    /// The class directory.
    pub dir: PathBuf,
    /// Its name.
    pub name: String,
    /// The classes it is not among.
    pub classes: Vec<String>,
}

/// Lists the class directories of `dir` and their images. With `classes`, the directory's
/// classes must be among them and take their labels (a validation set may lack a class).
pub fn scan(dir: &Path, classes: Option<&[String]>) -> crate::Result<Listing> {
    Ok(scan_dir(dir, classes)?)
}

/// [`scan`] for internal callers: an unknown class is an [`UnknownClass`] to downcast.
pub(crate) fn scan_dir(dir: &Path, classes: Option<&[String]>) -> anyhow::Result<Listing> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        // `is_dir` on the path follows links, as torchvision's `entry.is_dir()` does.
        if entry.path().is_dir() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                bail!(
                    "class directory name is not valid UTF-8: {}",
                    entry.path().display()
                );
            };
            found.push(name);
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("no class directories in {}", dir.display());
    }
    let classes: Vec<String> = classes.map_or_else(|| found.clone(), <[String]>::to_vec);
    let mut samples = Vec::new();
    for name in &found {
        let Some(label) = classes.iter().position(|c| c == name) else {
            return Err(UnknownClass {
                dir: dir.join(name),
                name: name.clone(),
                classes,
            }
            .into());
        };
        let class_dir = dir.join(name);
        let files = image_files(&class_dir)?;
        if files.is_empty() {
            bail!(
                "class directory {} has no images ({})",
                class_dir.display(),
                EXTENSIONS.map(|e| format!(".{e}")).join(" ")
            );
        }
        samples.extend(files.into_iter().map(|f| (f, label as i64)));
    }
    Ok(Listing { classes, samples })
}

/// Whether `path` has one of [`EXTENSIONS`], in any case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The image files under `dir`, recursively, in torchvision's order (`sorted(os.walk(dir))`,
/// then sorted file names): directories compare as strings, so `a/b/c` follows `a/b-2`.
///
/// Links are followed, but each directory is walked once: one reached a second time (a link
/// back to an ancestor, or two links to one directory) is skipped, so a link loop neither
/// hangs the scan nor repeats samples. The walk is depth-first in name order, so the path
/// listed for a directory reached twice does not depend on the file system's order.
fn image_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut visited = HashSet::from([dir_id(&meta)]);
    let mut dirs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let mut entries = std::fs::read_dir(&d)
            .and_then(|r| {
                r.map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .with_context(|| format!("cannot list {}", d.display()))?;
        entries.sort_by(|a, b| {
            a.as_os_str()
                .as_encoded_bytes()
                .cmp(b.as_os_str().as_encoded_bytes())
        });
        let (mut files, mut subdirs) = (Vec::new(), Vec::new());
        for path in entries {
            // Follows links; a broken link with an image extension stays a file, whose read
            // then fails naming it (as anything that is not a regular file does).
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => subdirs.extend(
                    (depth < MAX_DEPTH && visited.insert(dir_id(&m))).then(|| (path, depth + 1)),
                ),
                _ if has_image_extension(&path) => files.push(path),
                _ => {}
            }
        }
        // Popped in name order.
        stack.extend(subdirs.into_iter().rev());
        dirs.push((d, files));
    }
    dirs.sort_by(|a, b| {
        a.0.as_os_str()
            .as_encoded_bytes()
            .cmp(b.0.as_os_str().as_encoded_bytes())
    });
    Ok(dirs.into_iter().flat_map(|(_, files)| files).collect())
}

/// What identifies a directory however it is reached: (device, inode).
fn dir_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Holds out `round(n * fraction)` files of each class (at least one, and never the last
/// one), chosen by a stream seeded with (`seed`, class); both parts keep the listing order.
pub fn split(listing: Listing, fraction: f64, seed: u64) -> (Listing, Listing) {
    let mut held_out = vec![false; listing.samples.len()];
    for label in 0..listing.classes.len() as i64 {
        let mut members: Vec<usize> = (0..listing.samples.len())
            .filter(|&i| listing.samples[i].1 == label)
            .collect();
        let n = members.len();
        let take = ((n as f64 * fraction).round() as usize)
            .max(1)
            .min(n.saturating_sub(1));
        members.shuffle(&mut seed::rng(&[seed, seed::tag::SPLIT, label as u64]));
        for &i in &members[..take] {
            held_out[i] = true;
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (sample, out) in listing.samples.into_iter().zip(held_out) {
        if out {
            val.push(sample)
        } else {
            train.push(sample)
        }
    }
    (
        Listing {
            classes: listing.classes.clone(),
            samples: train,
        },
        Listing {
            classes: listing.classes,
            samples: val,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    fn names(l: &Listing, root: &Path) -> Vec<(String, i64)> {
        l.samples
            .iter()
            .map(|(p, y)| (p.strip_prefix(root).unwrap().display().to_string(), *y))
            .collect()
    }

    #[test]
    fn classes_and_files_sort_as_torchvision() {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "b/2.PNG",
            "b/10.jpg",
            "a/x.jpeg",
            "a/sub/y.bmp",
            "a/sub-2/z.webp",
            "a/sub/deep/w.jpg",
            "a/notes.txt",
            "B/q.jpg",
        ] {
            touch(t.path(), f);
        }
        let l = scan(t.path(), None).unwrap();
        assert_eq!(l.classes, ["B", "a", "b"]);
        // The order torchvision's `make_dataset` gives for this tree.
        let expect = [
            ("B/q.jpg", 0),
            ("a/x.jpeg", 1),
            ("a/sub/y.bmp", 1),
            ("a/sub-2/z.webp", 1),
            ("a/sub/deep/w.jpg", 1),
            ("b/10.jpg", 2),
            ("b/2.PNG", 2),
        ];
        assert_eq!(names(&l, t.path()), expect.map(|(p, y)| (p.to_string(), y)));
    }

    #[test]
    fn empty_class_and_empty_root_are_errors_naming_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let err = scan(t.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("no class directories") && err.contains(&t.path().display().to_string()),
            "{err}"
        );
        touch(t.path(), "cat/1.jpg");
        touch(t.path(), "dog/readme.txt");
        let err = scan(t.path(), None).unwrap_err().to_string();
        assert!(
            err.contains(&t.path().join("dog").display().to_string()) && err.contains("no images"),
            "{err}"
        );
    }

    #[test]
    fn val_classes_take_training_labels() {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "train/a/1.jpg",
            "train/b/1.jpg",
            "train/c/1.jpg",
            "val/c/1.jpg",
            "val/a/2.jpg",
        ] {
            touch(t.path(), f);
        }
        let (train, val) = listings(t.path(), 0.0, 0).unwrap();
        assert_eq!(train.classes, ["a", "b", "c"]);
        assert_eq!(val.classes, train.classes);
        assert_eq!(
            names(&val, &t.path().join("val")),
            [("a/2.jpg".to_string(), 0), ("c/1.jpg".to_string(), 2)]
        );
        touch(t.path(), "val/zebra/1.jpg");
        let err = listings(t.path(), 0.0, 0).unwrap_err().to_string();
        assert!(
            err.contains("zebra") && err.contains("not a training class"),
            "{err}"
        );
    }

    #[test]
    fn layouts_without_a_validation_set_say_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "a/1.jpg");
        assert!(listings(t.path(), 0.0, 0)
            .unwrap_err()
            .to_string()
            .contains("val_fraction"));
        touch(t.path(), "train/a/1.jpg");
        assert!(listings(t.path(), 0.0, 0)
            .unwrap_err()
            .to_string()
            .contains("no val/"));
        assert!(listings(&t.path().join("missing"), 0.2, 0)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let samples = (0..30)
            .map(|i| (PathBuf::from(format!("{i:02}")), if i < 20 { 0 } else { 1 }))
            .collect();
        let listing = Listing { classes, samples };
        let (train, val) = split(listing.clone(), 0.2, 9);
        assert_eq!(val.samples.iter().filter(|s| s.1 == 0).count(), 4);
        assert_eq!(val.samples.iter().filter(|s| s.1 == 1).count(), 2);
        assert_eq!(train.samples.len() + val.samples.len(), 30);
        assert!(train.samples.iter().all(|s| !val.samples.contains(s)));
        assert!(
            train.samples.windows(2).all(|w| w[0].0 < w[1].0),
            "order kept"
        );
        assert_eq!(split(listing.clone(), 0.2, 9), (train, val.clone()));
        assert_ne!(split(listing, 0.2, 10).1, val);
    }

    #[test]
    fn link_loops_and_repeated_links_list_each_directory_once() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        touch(outside.path(), "o.jpg");
        for f in ["a/1.jpg", "a/sub/2.jpg", "b/3.jpg"] {
            touch(t.path(), f);
        }
        // Loops back to the class, to its parent and to the root; two links to one outside
        // directory; a link to the other class.
        symlink("..", t.path().join("a/sub/up")).unwrap();
        symlink(".", t.path().join("a/sub/here")).unwrap();
        symlink(t.path(), t.path().join("a/root")).unwrap();
        symlink(outside.path(), t.path().join("a/ext1")).unwrap();
        symlink(outside.path(), t.path().join("a/ext2")).unwrap();
        symlink("../b", t.path().join("b/self")).unwrap();
        let l = scan(t.path(), None).unwrap();
        // `a/root` reaches the root, whose `a` is already walked, and whose `b` is walked
        // once more (as class a: a link into another class is that user's choice).
        assert_eq!(
            names(&l, t.path()),
            [
                ("a/1.jpg", 0),
                ("a/ext1/o.jpg", 0),
                ("a/root/b/3.jpg", 0),
                ("a/sub/2.jpg", 0),
                ("b/3.jpg", 1),
            ]
            .map(|(p, y)| (p.to_string(), y))
        );
    }

    #[test]
    fn non_regular_image_files_are_listed_and_refused_when_read() {
        let t = tempfile::tempdir().unwrap();
        touch(t.path(), "a/ok.jpg");
        std::os::unix::fs::symlink("/dev/zero", t.path().join("a/zero.jpg")).unwrap();
        let l = scan(t.path(), None).unwrap();
        assert_eq!(l.samples.len(), 2);
        let cfg = DataConfig::default();
        let folder = ImageFolder::new(l, Transform::eval(&cfg), 100);
        let zero = folder
            .samples()
            .iter()
            .position(|s| s.0.ends_with("zero.jpg"))
            .unwrap();
        let err = folder
            .get(zero, &mut seed::rng(&[]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("zero.jpg") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_one_file_class_stays_in_training() {
        let listing = Listing {
            classes: vec!["a".into()],
            samples: vec![(PathBuf::from("x"), 0)],
        };
        let (train, val) = split(listing, 0.5, 0);
        assert_eq!((train.samples.len(), val.samples.len()), (1, 0));
    }
}
