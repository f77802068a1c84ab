//! Evaluate a checkpoint on a labelled set: loss, top-1 and top-5 accuracy, per-class
//! precision and recall, and the confusion matrix, as a JSON-serialisable [`Report`].
//!
//! The set is the checkpoint config's own validation split, or an image folder
//! (`DIR/<class>/<image>`) whose folder names must be classes of the checkpoint.

use crate::checkpoint::Restored;
use crate::config::Precision;
use crate::data::image_folder::{self, ImageFolder, UnknownClass};
use crate::data::loader::{Loader, LoaderOptions};
use crate::data::normalize::{Normalize, PixelNorm};
use crate::data::transforms::Transform;
use crate::data::{self, Dataset};
use crate::predict;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::nn::ModuleT;
use tch::{Device, Kind, Reduction, Tensor};

/// Models with more outputs than this get no dense `confusion` matrix in the [`Report`]
/// (n² counts: 20 000 classes would be 3.2 GB): the off-diagonal counts are in
/// [`Report::mistakes`] either way, which has at most one entry per image.
pub const DENSE_CONFUSION_MAX: usize = 1000;

/// The text report and the confusion-matrix picture show at most this many classes: all of
/// them up to this count, else those with the most mistakes (missed plus wrongly predicted).
pub const SHOWN_CLASSES: usize = 30;

/// Precision and recall of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Class name (`#i` for an output the checkpoint does not name).
    pub class: String,
    /// Images whose true class this is.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
    /// Images of this class predicted as this class.
    pub correct: u64,
    /// Correct / predicted; `None` when nothing was predicted as this class.
    pub precision: Option<f64>,
    /// Correct / support; `None` when the set has no image of this class.
    pub recall: Option<f64>,
}

/// Images of class `truth` predicted as `predicted` (a different class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mistake {
    /// True class, an output index.
    pub truth: usize,
    /// Top-1 predicted class, an output index, never `truth`.
    pub predicted: usize,
    /// Number of such images, at least 1.
    pub count: u64,
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Images evaluated (unreadable, skipped ones excluded).
    pub images: u64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy, a fraction in [0, 1].
    pub top1: f64,
    /// Top-k accuracy with `k = min(5, number of outputs)`.
    pub top5: f64,
    /// Precision and recall of every output class, in output order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` counts, in output order; empty when the model has more
    /// than [`DENSE_CONFUSION_MAX`] outputs.
    pub confusion: Vec<Vec<u64>>,
    /// Every off-diagonal count of the confusion matrix, most frequent first (ties by class
    /// index).
    pub mistakes: Vec<Mistake>,
    /// Name of every output, in output order (`#i` where the checkpoint has none).
    pub classes: Vec<String>,
}

impl Report {
    /// The confusion matrix restricted to `shown` classes (rows: true, columns: predicted,
    /// in the order given), from the per-class and mistake counts.
    pub fn submatrix(&self, shown: &[usize]) -> Vec<Vec<u64>> {
        let pos: HashMap<usize, usize> = shown.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        let mut m = vec![vec![0; shown.len()]; shown.len()];
        for (i, &c) in shown.iter().enumerate() {
            m[i][i] = self.per_class.get(c).map_or(0, |c| c.correct);
        }
        for x in &self.mistakes {
            if let (Some(&r), Some(&c)) = (pos.get(&x.truth), pos.get(&x.predicted)) {
                m[r][c] = x.count;
            }
        }
        m
    }

    /// The classes the text report and the picture show, in output order: all when there
    /// are at most [`SHOWN_CLASSES`], else the [`SHOWN_CLASSES`] with the most mistakes
    /// (missed plus wrongly predicted; ties by support, then index).
    pub fn shown_classes(&self) -> Vec<usize> {
        let n = self.per_class.len();
        if n <= SHOWN_CLASSES {
            return (0..n).collect();
        }
        let errors = |c: &ClassMetrics| (c.support - c.correct) + (c.predicted - c.correct);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            let c = &self.per_class[i];
            (
                std::cmp::Reverse(errors(c)),
                std::cmp::Reverse(c.support),
                i,
            )
        });
        order.truncate(SHOWN_CLASSES);
        order.sort_unstable();
        order
    }
}

/// Running counts over batches. Memory is linear in the number of classes plus the number
/// of distinct mistakes (never n²).
#[derive(Debug, Clone)]
pub struct Accumulator {
    classes: Vec<String>,
    k: usize,
    loss_sum: f64,
    images: u64,
    top1: u64,
    topk: u64,
    support: Vec<u64>,
    predicted: Vec<u64>,
    correct: Vec<u64>,
    mistakes: HashMap<(usize, usize), u64>,
    /// Whether non-finite logits are counted (training's validation of a run that diverges
    /// under `on_nonfinite = "skip"`: its metrics are NaN) instead of refused.
    allow_non_finite: bool,
}

impl Accumulator {
    /// Counts for a model with `num_outputs` classes named (possibly partly) by `classes`.
    pub fn new(classes: &[String], num_outputs: usize) -> Accumulator {
        Accumulator {
            classes: (0..num_outputs)
                .map(|i| predict::class_name(classes, i))
                .collect(),
            k: num_outputs.min(5),
            loss_sum: 0.0,
            images: 0,
            top1: 0,
            topk: 0,
            support: vec![0; num_outputs],
            predicted: vec![0; num_outputs],
            correct: vec![0; num_outputs],
            mistakes: HashMap::new(),
            allow_non_finite: false,
        }
    }

    /// Counts non-finite logits (the loss becomes NaN) instead of refusing them.
    pub fn allow_non_finite(mut self) -> Accumulator {
        self.allow_non_finite = true;
        self
    }

    /// Adds one batch of logits `[b, classes]` and labels `[b]`. Non-finite logits (a model
    /// whose weights overflow) are an error, not a NaN accuracy.
    pub fn add(&mut self, logits: &Tensor, labels: &Tensor) -> crate::Result<()> {
        crate::error::boundary(|| {
            let cpu_labels = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu))?;
            let n = self.classes.len() as i64;
            if let Some(y) = cpu_labels.iter().find(|&&y| !(0..n).contains(&y)) {
                anyhow::bail!("label {y} is not an output of the model ({n} classes)");
            }
            let labels = labels.to_device(logits.device());
            if !self.allow_non_finite && !bool::try_from(logits.f_isfinite()?.f_all()?)? {
                anyhow::bail!("the model's outputs are not finite (NaN or infinite logits)");
            }
            let loss = logits
                .f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?
                .double_value(&[]);
            let (_, top) = logits.f_topk(self.k as i64, -1, true, true)?;
            let top = Vec::<i64>::try_from(top.to_device(tch::Device::Cpu).flatten(0, -1))?;
            self.add_ranked(&top, &cpu_labels, loss);
            Ok(())
        })
    }

    /// Adds ranked predictions (`k` class indices per image, best first, row-major) for
    /// `labels`, and the batch's summed loss.
    pub fn add_ranked(&mut self, ranked: &[i64], labels: &[i64], loss_sum: f64) {
        debug_assert_eq!(ranked.len(), labels.len() * self.k);
        for (row, &y) in ranked.chunks(self.k).zip(labels) {
            let (y, p) = (y as usize, row[0] as usize);
            self.support[y] += 1;
            self.predicted[p] += 1;
            if y == p {
                self.correct[y] += 1;
            } else {
                *self.mistakes.entry((y, p)).or_default() += 1;
            }
            self.top1 += u64::from(y == p);
            self.topk += u64::from(row.contains(&(y as i64)));
        }
        self.images += labels.len() as u64;
        self.loss_sum += loss_sum;
    }

    /// The report of everything added so far (loss and accuracies are NaN if nothing was).
    pub fn report(&self) -> Report {
        let n = self.images as f64;
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let per_class = self
            .classes
            .iter()
            .enumerate()
            .map(|(c, name)| ClassMetrics {
                class: name.clone(),
                support: self.support[c],
                predicted: self.predicted[c],
                correct: self.correct[c],
                precision: ratio(self.correct[c], self.predicted[c]),
                recall: ratio(self.correct[c], self.support[c]),
            })
            .collect();
        let mut mistakes: Vec<Mistake> = self
            .mistakes
            .iter()
            .map(|(&(truth, predicted), &count)| Mistake {
                truth,
                predicted,
                count,
            })
            .collect();
        mistakes.sort_by_key(|m| (std::cmp::Reverse(m.count), m.truth, m.predicted));
        let classes = self.classes.len();
        let confusion = if classes <= DENSE_CONFUSION_MAX {
            let mut m = vec![vec![0; classes]; classes];
            for (c, row) in m.iter_mut().enumerate() {
                row[c] = self.correct[c];
            }
            for x in &mistakes {
                m[x.truth][x.predicted] = x.count;
            }
            m
        } else {
            Vec::new()
        };
        Report {
            images: self.images,
            loss: self.loss_sum / n,
            top1: self.top1 as f64 / n,
            top5: self.topk as f64 / n,
            per_class,
            confusion,
            mistakes,
            classes: self.classes.clone(),
        }
    }
}

/// What one pass over an evaluation set gave.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The counts and metrics.
    pub report: Report,
    /// Samples the loader skipped (`data.on_error = "skip"`), with the reason.
    pub skipped: Vec<String>,
}

/// Runs `model` in eval mode over every batch of `loader`, under autocast at `precision`:
/// the one validation path of training and of `hondo eval`. `classes` name (possibly only
/// some of) the model's `num_outputs` outputs. With `finite_only`, non-finite logits are an
/// error (`hondo eval`); without, they count and make the loss NaN (training's validation,
/// whose non-finite policy is `train.on_nonfinite`).
pub fn evaluate(
    model: &dyn ModuleT,
    loader: &Loader,
    normalize: &Normalize,
    precision: Precision,
    classes: &[String],
    num_outputs: usize,
    finite_only: bool,
) -> crate::Result<Evaluation> {
    crate::error::boundary(|| {
        let mut acc = Accumulator::new(classes, num_outputs);
        if !finite_only {
            acc = acc.allow_non_finite();
        }
        let mut skipped = Vec::new();
        tch::no_grad(|| -> anyhow::Result<()> {
            for batch in loader.epoch(0, 0) {
                let batch = batch.map_err(crate::data::loader::LoadError::in_training)?;
                skipped.extend(batch.skipped.iter().map(|e| e.to_string()));
                if batch.labels.size()[0] == 0 {
                    continue;
                }
                let x = normalize.apply(&batch.images);
                let logits = {
                    let _autocast = crate::ops::autocast(precision, x.device())?;
                    model.forward_t(&x, false)
                };
                acc.add(&logits.to_kind(Kind::Float), &batch.labels)?;
            }
            Ok(())
        })?;
        if acc.images == 0 {
            anyhow::bail!("the evaluation set is empty");
        }
        Ok(Evaluation {
            report: acc.report(),
            skipped,
        })
    })
}

/// What [`run`] evaluates and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// An image folder (`DIR/<class>/<image>`); `None`: the checkpoint config's validation
    /// split.
    pub data: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Loader threads; 0 picks one per core.
    pub workers: usize,
}

/// Evaluates a restored checkpoint as `opts` says.
pub fn run(restored: &Restored, opts: &EvalOptions) -> crate::Result<Report> {
    crate::error::boundary(|| {
        predict::check_finite(&restored.vs)?;
        let meta = &restored.meta;
        crate::budget::check_inference(
            &restored.config,
            meta.image_size,
            meta.num_classes as usize,
            opts.batch_size.max(1),
            restored.vs.device().is_cuda(),
        )?;
        let dataset: Arc<dyn Dataset> = match &opts.data {
            Some(dir) => Arc::new(labelled_folder(
                dir,
                &meta.classes,
                Transform::center(meta.image_size, meta.crop_fraction),
                restored.config.data.max_image_side,
            )?),
            None => {
                let val = data::build(&restored.config.data)?.val;
                if val.classes() != meta.classes.as_slice() {
                    anyhow::bail!(
                        "the checkpoint's validation set has classes {:?}, the checkpoint {:?}",
                        val.classes(),
                        meta.classes
                    );
                }
                val
            }
        };
        let loader = Loader::new(
            dataset,
            LoaderOptions {
                batch_size: opts.batch_size.max(1),
                shuffle: false,
                drop_last: false,
                seed: 0,
                workers: opts.workers,
                prefetch: 2,
                fail_on_error: true,
                pin_memory: false,
                shard: None,
                normalize: (restored.vs.device() == Device::Cpu)
                    .then(|| PixelNorm::new(meta.mean, meta.std, false)),
            },
        )?;
        let normalize = Normalize::new(meta.mean, meta.std, restored.vs.device(), false);
        let e = evaluate(
            restored.model.as_ref(),
            &loader,
            &normalize,
            Precision::Fp32,
            &meta.classes,
            meta.num_classes as usize,
            true,
        )?;
        Ok(e.report)
    })
}

/// Labelled images in `DIR/<class>/...`, scanned as an image folder's validation split is,
/// read with `transform`; each folder name must be one of the checkpoint's `classes`, whose
/// order gives the labels.
pub fn labelled_folder(
    dir: &Path,
    classes: &[String],
    transform: Transform,
    max_side: u32,
) -> crate::Result<ImageFolder> {
    crate::error::boundary(|| {
        let listing = image_folder::scan_dir(dir, Some(classes)).map_err(|e| match e
            .downcast_ref::<UnknownClass>()
        {
            Some(u) => anyhow::anyhow!(
                "{}: class `{}` is not one of the checkpoint's classes ({})",
                u.dir.display(),
                u.name,
                u.classes.join(", ")
            ),
            None => e,
        })?;
        Ok(ImageFolder::new(listing, transform, max_side))
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

impl std::fmt::Display for Report {
    /// Summary, per-class table and confusion matrix (rows: true class), for at most
    /// [`SHOWN_CLASSES`] classes (see [`Report::shown_classes`]); the most frequent mistakes
    /// when there are more.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "images {}  loss {:.4}  top-1 {:.2}%  top-{} {:.2}%",
            self.images,
            self.loss,
            self.top1 * 100.0,
            self.classes.len().min(5),
            self.top5 * 100.0
        )?;
        let shown = self.shown_classes();
        let name = |i: usize| self.classes[i].as_str();
        let partial = shown.len() < self.classes.len();
        if partial {
            writeln!(
                f,
                "\n{} classes: showing the {} with the most mistakes (--json has every class)",
                self.classes.len(),
                shown.len()
            )?;
        }
        let w = shown
            .iter()
            .map(|&c| name(c).len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "\n{:<w$}  {:>8}  {:>10}  {:>8}",
            "class", "support", "precision", "recall"
        )?;
        for &i in &shown {
            let c = &self.per_class[i];
            writeln!(
                f,
                "{:<w$}  {:>8}  {:>10}  {:>8}",
                c.class,
                c.support,
                pct(c.precision),
                pct(c.recall)
            )?;
        }
        if partial {
            writeln!(f, "\nmost frequent mistakes (true -> predicted: images)")?;
            for m in self.mistakes.iter().take(SHOWN_CLASSES) {
                writeln!(f, "{} -> {}: {}", name(m.truth), name(m.predicted), m.count)?;
            }
            if self.mistakes.is_empty() {
                writeln!(f, "none")?;
            }
        }
        let matrix = self.submatrix(&shown);
        writeln!(
            f,
            "\nconfusion matrix (rows: true class, columns: predicted{})",
            if partial { "; shown classes only" } else { "" }
        )?;
        let cw = matrix
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .chain(shown.iter().map(|&c| name(c).len()))
            .max()
            .unwrap_or(1);
        write!(f, "{:<w$}", "")?;
        for &c in &shown {
            write!(f, "  {:>cw$}", name(c))?;
        }
        writeln!(f)?;
        for (&c, row) in shown.iter().zip(&matrix) {
            write!(f, "{:<w$}", name(c))?;
            for v in row {
                write!(f, "  {v:>cw$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        ["a", "b", "c"][..n].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_top1_topk_precision_recall_and_confusion() {
        let mut acc = Accumulator::new(&names(3), 3);
        // k = 3: ranked rows for 4 images with labels a, a, b, c.
        let ranked = [0, 1, 2, 1, 0, 2, 1, 2, 0, 1, 0, 2];
        acc.add_ranked(&ranked, &[0, 0, 1, 2], 4.0);
        let r = acc.report();
        assert_eq!(r.images, 4);
        assert_eq!(r.loss, 1.0);
        assert_eq!(r.top1, 0.5);
        assert_eq!(r.top5, 1.0);
        assert_eq!(
            r.confusion,
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![0, 1, 0]]
        );
        let b = &r.per_class[1];
        assert_eq!((b.support, b.predicted), (1, 3));
        assert_eq!(b.precision, Some(1.0 / 3.0));
        assert_eq!(b.recall, Some(1.0));
        let c = &r.per_class[2];
        assert_eq!((c.precision, c.recall), (None, Some(0.0)));
        let text = r.to_string();
        assert!(
            text.contains("top-1 50.00%") && text.contains("confusion matrix"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["per_class"][2]["precision"], serde_json::Value::Null);
    }

    #[test]
    fn tensor_batches_match_hand_counts() {
        let mut acc = Accumulator::new(&names(2), 2);
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 2.0, 3.0, 0.0]).view([3, 2]);
        acc.add(&logits, &Tensor::from_slice(&[0i64, 1, 1]))
            .unwrap();
        let r = acc.report();
        assert_eq!(r.top1, 2.0 / 3.0);
        assert_eq!(r.top5, 1.0);
        assert_eq!(r.confusion, vec![vec![1, 0], vec![1, 1]]);
        let expect = (2.0 * (1.0 + (-2.0f64).exp()).ln() + (1.0 + 3.0f64.exp()).ln()) / 3.0;
        assert!((r.loss - expect).abs() < 1e-5, "{} vs {expect}", r.loss);
    }

    #[test]
    fn unknown_class_folders_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        std::fs::create_dir_all(d.path().join("zebra")).unwrap();
        std::fs::write(d.path().join("a/x.png"), "").unwrap();
        let t = Transform::center(8, 1.0);
        let e = labelled_folder(d.path(), &names(2), t.clone(), 64)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("zebra") && e.contains("not one of"), "{e}");
        std::fs::remove_dir(d.path().join("zebra")).unwrap();
        let set = labelled_folder(d.path(), &names(2), t, 64).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn many_classes_keep_no_dense_matrix_and_show_the_most_mistaken() {
        let n = DENSE_CONFUSION_MAX + 1;
        let mut acc = Accumulator::new(&[], n);
        // Class 7: three images, all predicted as 9; class 500: one right.
        let labels = [7i64, 7, 7, 500];
        let ranked: Vec<i64> = [9i64, 9, 9, 500]
            .iter()
            .flat_map(|&p| [p, 1, 2, 3, 4])
            .collect();
        acc.add_ranked(&ranked, &labels, 4.0);
        let r = acc.report();
        assert!(r.confusion.is_empty());
        assert_eq!(
            r.mistakes,
            vec![Mistake {
                truth: 7,
                predicted: 9,
                count: 3
            }]
        );
        let shown = r.shown_classes();
        assert_eq!(shown.len(), SHOWN_CLASSES);
        assert!(shown.contains(&7) && shown.contains(&9) && shown.contains(&500));
        assert!(shown.windows(2).all(|w| w[0] < w[1]));
        let m = r.submatrix(&[7, 9, 500]);
        assert_eq!(m, vec![vec![0, 3, 0], vec![0, 0, 0], vec![0, 0, 1]]);
        let text = r.to_string();
        assert!(
            text.contains("showing the 30 with the most mistakes"),
            "{text}"
        );
        assert!(text.contains("#7 -> #9: 3"), "{text}");
        assert!(text.lines().count() < 100);
    }

    #[test]
    fn non_finite_logits_and_stray_labels_are_errors() {
        let mut acc = Accumulator::new(&names(2), 2);
        let nan = Tensor::from_slice(&[f32::NAN, 0.0]).view([1, 2]);
        let e = acc.add(&nan, &Tensor::from_slice(&[0i64])).unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
        let ok = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let e = acc.add(&ok, &Tensor::from_slice(&[5i64])).unwrap_err();
        assert!(e.to_string().contains("label 5"), "{e}");
        assert_eq!(acc.report().images, 0);
    }
}
