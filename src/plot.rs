//! PNG pictures of a run: training curves (loss, accuracy and learning rate per epoch, from
//! `metrics.jsonl`) and confusion matrices.
//!
//! Drawn with plotters into an RGB buffer and encoded with `image`; text uses DejaVu Sans
//! embedded in the binary (the `dejavu` crate) through ab_glyph, so plotting needs no system
//! fonts or font libraries.

use crate::evaluate::Report;
use crate::metrics::{self, EpochMetrics};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The file [`training_curves`] writes in a run directory.
pub const TRAINING_CURVES: &str = "training-curves.png";

const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const LR: RGBColor = RGBColor(44, 160, 44);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let bytes = match style {
                FontStyle::Bold => dejavu::sans::bold(),
                _ => dejavu::sans::regular(),
            };
            // The bytes are a valid TrueType font shipped by the crate.
            let _ = plotters::style::register_font(FONT, style, bytes);
        }
    });
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A named, coloured line: `(epoch, value)` points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Values beyond this magnitude are not drawn (a diverged run's loss, a crafted file): they
/// would flatten every other point to the axis, and ranges near `f64::MAX` overflow the
/// axis arithmetic.
pub const MAX_PLOTTED: f64 = 1e12;

/// What [`curves`] drew.
#[derive(Debug, Clone)]
pub struct Curves {
    /// The PNG written: `run_dir/training-curves.png`.
    pub path: PathBuf,
    /// Values left out, per series: non-finite or beyond [`MAX_PLOTTED`].
    pub notes: Vec<String>,
}

/// Draws `metrics.jsonl` of `run_dir` as `run_dir/training-curves.png`: train and validation
/// loss, train and validation accuracy, and the learning rate, per epoch. Returns the path.
pub fn training_curves(run_dir: &Path) -> crate::Result<PathBuf> {
    curves(run_dir).map(|c| c.path)
}

/// [`training_curves`], with notes on the values that were left out.
pub fn curves(run_dir: &Path) -> crate::Result<Curves> {
    let file = run_dir.join(metrics::METRICS_FILE);
    let epochs = metrics::read(&file)?;
    if epochs.is_empty() {
        return Err(crate::Error::Data {
            path: file,
            reason: "no finished epoch to plot".into(),
        });
    }
    let out = run_dir.join(TRAINING_CURVES);
    let notes = draw_noted(&epochs, &out)?;
    Ok(Curves { path: out, notes })
}

/// Draws training curves of `epochs` into the PNG file `out`.
pub fn draw_training_curves(epochs: &[EpochMetrics], out: &Path) -> crate::Result<()> {
    draw_noted(epochs, out)?;
    Ok(())
}

fn draw_noted(epochs: &[EpochMetrics], out: &Path) -> anyhow::Result<Vec<String>> {
    let (w, h) = (1500u32, 480u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let notes = draw_curves(&mut buf, (w, h), epochs)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
    save_png(out, &buf, w, h)?;
    Ok(notes)
}

/// The drawable points of one series: finite, within [`MAX_PLOTTED`]; the rest counted in
/// `notes` (NaN is an epoch with no value, e.g. all steps skipped, and is not noted).
fn points(
    epochs: &[EpochMetrics],
    name: &str,
    f: impl Fn(&EpochMetrics) -> f64,
    notes: &mut Vec<String>,
) -> Vec<(f64, f64)> {
    let mut left_out = 0usize;
    let mut first = None;
    let points = epochs
        .iter()
        .map(|m| (m.epoch as f64, f(m)))
        .filter(|&(e, v)| {
            if v.is_nan() {
                return false;
            }
            let ok = v.abs() <= MAX_PLOTTED;
            if !ok {
                left_out += 1;
                first.get_or_insert(e);
            }
            ok
        })
        .collect();
    if let Some(e) = first {
        notes.push(format!(
            "{name}: {left_out} value(s) beyond ±{MAX_PLOTTED:e} not drawn (first at epoch {e})"
        ));
    }
    points
}

/// A y range holding every point of `series` and the range `base`: finite, at least
/// `min_span` wide, with a margin above (and below, when points fall under `base`). `base`
/// holds 0, so the range is never too narrow for f64 next to its magnitude, and points are
/// within [`MAX_PLOTTED`], so its ends never overflow.
fn y_range(series: &[Series], base: std::ops::Range<f64>, min_span: f64) -> std::ops::Range<f64> {
    let values = series.iter().flat_map(|(_, _, s)| s.iter().map(|p| p.1));
    let (lo, hi) = values.fold((base.start, base.end), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(min_span);
    let below = if lo < base.start { span * 0.08 } else { 0.0 };
    (lo - below)..(lo + span * 1.08)
}

fn draw_curves(
    buf: &mut [u8],
    size: (u32, u32),
    epochs: &[EpochMetrics],
) -> DrawResult<Vec<String>> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let mut notes = Vec::new();
    let x_min = epochs.first().map_or(1.0, |m| m.epoch as f64).min(1.0);
    let x_max = (epochs.last().map_or(1, |m| m.epoch).max(2) as f64).max(x_min + 1.0);
    let x = x_min..x_max;
    let loss = [
        (
            "train loss",
            TRAIN,
            points(epochs, "train loss", |m| m.train_loss, &mut notes),
        ),
        (
            "val loss",
            VAL,
            points(epochs, "val loss", |m| m.val_loss, &mut notes),
        ),
    ];
    let acc = [
        (
            "train acc %",
            TRAIN,
            points(epochs, "train acc", |m| m.train_acc * 100.0, &mut notes),
        ),
        (
            "val acc %",
            VAL,
            points(epochs, "val acc", |m| m.val_acc * 100.0, &mut notes),
        ),
    ];
    let lr = [(
        "learning rate",
        LR,
        points(epochs, "learning rate", |m| m.lr, &mut notes),
    )];
    // Legends where the curves usually are not: losses fall, accuracies rise.
    use SeriesLabelPosition::{LowerRight, UpperRight};
    let loss_y = y_range(&loss, 0.0..0.0, 1e-3);
    panel(&panels[0], "Loss", x.clone(), loss_y, &loss, UpperRight)?;
    // Accuracies outside 0..100 (a crafted file) widen the axis rather than vanish.
    let acc_y = y_range(&acc, 0.0..100.0, 1.0);
    let acc_y = if acc_y.start >= 0.0 && acc_y.end <= 108.0 {
        0.0..100.0
    } else {
        acc_y
    };
    panel(
        &panels[1],
        "Accuracy (%)",
        x.clone(),
        acc_y,
        &acc,
        LowerRight,
    )?;
    let lr_y = y_range(&lr, 0.0..0.0, 1e-12);
    panel(&panels[2], "Learning rate", x, lr_y, &lr, UpperRight)?;
    root.present()?;
    Ok(notes)
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> DrawResult<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 26).into_font().style(FontStyle::Bold))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.clone(), y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels((x.end - x.start).clamp(2.0, 10.0) as usize)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(3),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(legend)
        .draw()?;
    Ok(())
}

/// `0.1`, `0.0005`, `1.2e-5`: tick labels short enough for the axis.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws a confusion matrix (rows: true class, columns: predicted; cells shaded by the
/// row-normalised rate and labelled with counts) into the PNG file `out`: at most
/// [`SHOWN_CLASSES`](crate::evaluate::SHOWN_CLASSES) classes, those with the most mistakes
/// when the model has more (the title says so), so the picture's size is bounded.
pub fn confusion_matrix(report: &Report, out: &Path) -> crate::Result<()> {
    Ok(confusion_png(report, out)?)
}

fn confusion_png(report: &Report, out: &Path) -> anyhow::Result<()> {
    let shown = report.shown_classes();
    let names: Vec<String> = shown
        .iter()
        .map(|&c| {
            // Bounded label width: a class name is not a layout hazard.
            let name = &report.classes[c];
            match name.char_indices().nth(40) {
                Some((i, _)) => format!("{}…", &name[..i]),
                None => name.clone(),
            }
        })
        .collect();
    let n = names.len().max(1) as u32;
    let cell = (640 / n).clamp(24, 90);
    let label_w = names
        .iter()
        .map(|c| c.chars().count() as u32)
        .max()
        .unwrap_or(4)
        * 9
        + 30;
    let (w, h) = ((label_w + n * cell + 20).max(520), 80 + n * cell + 50);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let matrix = report.submatrix(&shown);
    // Rows are normalised by the class's whole support, not by the shown cells.
    let totals: Vec<u64> = shown.iter().map(|&c| report.per_class[c].support).collect();
    let title = if shown.len() < report.classes.len() {
        format!(
            "{} of {} classes (most mistakes); rows: true class, columns: predicted",
            shown.len(),
            report.classes.len()
        )
    } else {
        "rows: true class, columns: predicted class".to_string()
    };
    let picture = Picture {
        names: &names,
        matrix: &matrix,
        totals: &totals,
        subtitle: &title,
        cell,
        label_w,
    };
    draw_confusion(&mut buf, (w, h), report, &picture)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
    save_png(out, &buf, w, h)
}

/// What [`draw_confusion`] draws: the shown classes' names, counts and row totals.
struct Picture<'a> {
    names: &'a [String],
    matrix: &'a [Vec<u64>],
    totals: &'a [u64],
    subtitle: &'a str,
    cell: u32,
    label_w: u32,
}

fn draw_confusion(
    buf: &mut [u8],
    size: (u32, u32),
    report: &Report,
    p: &Picture,
) -> DrawResult<()> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, y0) = (p.label_w as i32, 80i32);
    let cell = p.cell as i32;
    let font = |px: f64| (FONT, px).into_font();
    root.draw(&Text::new(
        format!(
            "Confusion matrix: {} images, top-1 {:.2}%",
            report.images,
            report.top1 * 100.0
        ),
        (10, 10),
        font(20.0).style(FontStyle::Bold),
    ))?;
    root.draw(&Text::new(p.subtitle.to_string(), (10, 40), font(16.0)))?;
    let text_px = (cell as f64 * 0.32).clamp(11.0, 18.0);
    for (r, row) in p.matrix.iter().enumerate() {
        let total = p.totals[r].max(1);
        for (c, &v) in row.iter().enumerate() {
            let rate = v as f64 / total as f64;
            // White to dark blue.
            let shade = |lo: f64, hi: f64| (hi + (lo - hi) * rate) as u8;
            let fill = RGBColor(shade(8.0, 247.0), shade(48.0, 251.0), shade(107.0, 255.0));
            let (x, y) = (x0 + c as i32 * cell, y0 + r as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                fill.filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))?;
            let color = if rate > 0.5 { WHITE } else { BLACK };
            let label = v.to_string();
            let tw = label.len() as f64 * text_px * 0.6;
            root.draw(&Text::new(
                label,
                (
                    x + (cell as f64 / 2.0 - tw / 2.0) as i32,
                    y + (cell as f64 / 2.0 - text_px / 2.0) as i32,
                ),
                font(text_px).color(&color),
            ))?;
        }
    }
    let n = p.names.len() as i32;
    for (i, name) in p.names.iter().enumerate() {
        let y = y0 + i as i32 * cell + cell / 2 - 8;
        root.draw(&Text::new(name.clone(), (8, y), font(16.0)))?;
    }
    // Column names under the matrix, staggered when cells are narrow.
    for (i, name) in p.names.iter().enumerate() {
        let tw = (name.chars().count() as f64 * 14.0 * 0.55) as i32;
        let x = x0 + i as i32 * cell + ((cell - tw) / 2).max(2);
        let stagger = if cell < 70 { (i % 2) as i32 * 18 } else { 0 };
        let y = y0 + n * cell + 6 + stagger;
        root.draw(&Text::new(name.clone(), (x, y), font(14.0)))?;
    }
    root.present()?;
    Ok(())
}

/// Draws a learning-rate range test: the loss (smoothed, and raw in light grey) against
/// the learning rate on a log axis, the suggestion marked, into the PNG file `out`.
pub fn lr_find(result: &crate::train::LrFind, out: &Path) -> crate::Result<()> {
    let (w, h) = (900u32, 560u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    draw_lr_find(&mut buf, (w, h), result)
        .map_err(|e| crate::Error::Other(format!("drawing {}: {e}", out.display())))?;
    Ok(save_png(out, &buf, w, h)?)
}

fn draw_lr_find(buf: &mut [u8], size: (u32, u32), r: &crate::train::LrFind) -> DrawResult<()> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let pts = |ys: &[f64]| -> Vec<(f64, f64)> {
        r.lrs
            .iter()
            .zip(ys)
            .filter(|(lr, y)| **lr > 0.0 && y.is_finite() && y.abs() <= MAX_PLOTTED)
            .map(|(lr, y)| (lr.log10(), *y))
            .collect()
    };
    let smooth = pts(&r.smoothed);
    let raw = pts(&r.losses);
    let x0 = smooth.first().map_or(-7.0, |p| p.0);
    let x1 = smooth.last().map_or(1.0, |p| p.0).max(x0 + 1e-3);
    let lo = smooth.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let first = smooth.first().map_or(1.0, |p| p.1);
    let (lo, hi) = if lo.is_finite() {
        (lo, first.max(lo) * 1.5 + 1e-6)
    } else {
        (0.0, 1.0)
    };
    let y = (lo - (hi - lo) * 0.05)..hi;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("LR range test: suggestion {:.2e}", r.suggestion),
            (FONT, 24).into_font().style(FontStyle::Bold),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y.clone())?;
    chart
        .configure_mesh()
        .x_desc("learning rate (log scale)")
        .y_desc("training loss")
        .x_label_formatter(&|v| format!("{:.0e}", 10f64.powf(*v)))
        .y_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let clip = |p: &(f64, f64)| (p.0, p.1.clamp(y.start, y.end));
    chart.draw_series(LineSeries::new(
        raw.iter().map(clip),
        RGBColor(200, 200, 200).stroke_width(1),
    ))?;
    chart
        .draw_series(LineSeries::new(
            smooth.iter().map(clip),
            TRAIN.stroke_width(3),
        ))?
        .label("smoothed loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], TRAIN.stroke_width(3)));
    if let Some(&(sx, sy)) = r
        .smoothed
        .get(r.suggestion_index)
        .filter(|v| v.is_finite())
        .map(|v| (r.suggestion.log10(), *v))
        .as_ref()
    {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(sx, y.start), (sx, y.end)],
            VAL.stroke_width(2),
        )))?;
        chart
            .draw_series(std::iter::once(Circle::new(
                (sx, sy.clamp(y.start, y.end)),
                7,
                VAL.filled(),
            )))?
            .label(format!("suggestion {:.2e}", r.suggestion))
            .legend(|(x, y)| Circle::new((x + 12, y), 6, VAL.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Checks, before any work, that a PNG may be written to `out`: not over one of the
/// command's `inputs`, a hondo checkpoint, a run's config or metrics, or a file that is not
/// a PNG. Every PNG hondo writes is checked again when it is written.
pub fn check_png_output(out: &Path, inputs: &[&Path]) -> crate::Result<()> {
    crate::file::check_output(out, inputs, crate::file::OutputKind::Png).map_err(|e| {
        crate::Error::Data {
            path: out.to_path_buf(),
            reason: format!("cannot write it: it {e}"),
        }
    })
}

fn save_png(out: &Path, rgb: &[u8], w: u32, h: u32) -> anyhow::Result<()> {
    check_png_output(out, &[])?;
    let mut png = std::io::Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut png,
        rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| anyhow::anyhow!("encoding {}: {e}", out.display()))?;
    crate::checkpoint::atomic::write(out, png.get_ref())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize) -> EpochMetrics {
        let t = e as f64;
        EpochMetrics {
            epoch: e,
            step: e * 10,
            train_loss: 2.0 / t,
            train_acc: 1.0 - 0.5 / t,
            val_loss: 2.2 / t,
            val_acc: 1.0 - 0.6 / t,
            lr: 0.1 * (1.0 - t / 10.0),
            images_per_sec: 1.0,
            seconds: 1.0,
            skipped: 0,
            val_loss_ema: None,
            val_acc_ema: None,
        }
    }

    #[test]
    fn curves_are_written_from_metrics_jsonl() {
        let d = tempfile::tempdir().unwrap();
        for e in 1..=8 {
            metrics::append(&d.path().join("metrics.jsonl"), &epoch(e)).unwrap();
        }
        let out = training_curves(d.path()).unwrap();
        let img = image::open(&out).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (1500, 480));
        // Some pixels carry each series colour.
        for c in [TRAIN, VAL, LR] {
            assert!(img.pixels().any(|p| p.0 == [c.0, c.1, c.2]), "{c:?}");
        }
    }

    #[test]
    fn no_metrics_is_a_named_error() {
        let d = tempfile::tempdir().unwrap();
        let e = training_curves(d.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl"), "{e}");
    }

    #[test]
    fn numbers_stay_short() {
        assert_eq!(short_number(0.1), "0.1");
        assert_eq!(short_number(0.0005), "5.0e-4");
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(42.0), "42");
    }

    #[test]
    fn confusion_png_is_written() {
        let mut acc = crate::evaluate::Accumulator::new(&["cat".into(), "dog".into()], 2);
        acc.add_ranked(&[0, 1, 1, 0, 1, 0], &[0, 0, 1], 1.0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cm.png");
        confusion_matrix(&acc.report(), &p).unwrap();
        assert!(image::open(&p).is_ok());
    }

    /// Runs `f` on another thread and fails if it takes longer than `secs` (a hang).
    fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs))
            .expect("drawing did not finish in time")
    }

    #[test]
    fn extreme_values_are_left_out_with_a_note_and_drawing_ends() {
        let mut epochs: Vec<EpochMetrics> = (1..=4).map(epoch).collect();
        epochs[1].train_loss = 1.7e308;
        epochs[1].lr = f64::INFINITY;
        epochs[2].val_loss = -1.7e308;
        epochs[2].train_acc = f64::MAX;
        epochs[3].val_acc = f64::NAN;
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("x.png");
        let o = out.clone();
        let notes = bounded(30, move || draw_noted(&epochs, &o)).unwrap();
        assert_eq!(notes.len(), 4, "{notes:?}");
        for name in ["train loss", "val loss", "train acc", "learning rate"] {
            assert!(
                notes.iter().any(|n| n.starts_with(name)),
                "{name}: {notes:?}"
            );
        }
        assert!(notes[0].contains("first at epoch 2"), "{notes:?}");
        assert!(image::open(&out).is_ok());
    }

    #[test]
    fn degenerate_series_still_draw() {
        let d = tempfile::tempdir().unwrap();
        let flat: Vec<EpochMetrics> = (1..=3)
            .map(|e| EpochMetrics {
                train_loss: 0.0,
                val_loss: 0.0,
                lr: 0.0,
                ..epoch(e)
            })
            .collect();
        let one = vec![epoch(1)];
        let none = vec![EpochMetrics {
            train_loss: f64::NAN,
            val_loss: f64::NAN,
            train_acc: f64::NAN,
            val_acc: f64::NAN,
            ..epoch(1)
        }];
        for (i, e) in [flat, one, none].into_iter().enumerate() {
            let out = d.path().join(format!("{i}.png"));
            let notes = bounded(30, move || draw_noted(&e, &out)).unwrap();
            assert!(notes.is_empty(), "{notes:?}");
        }
    }

    #[test]
    fn y_ranges_hold_every_point_and_are_never_empty() {
        let s = |v: &[f64]| -> Vec<Series> {
            vec![("s", TRAIN, v.iter().map(|&y| (1.0, y)).collect())]
        };
        let r = y_range(&s(&[5.0, 2.0]), 0.0..0.0, 1e-3);
        assert_eq!(r.start, 0.0);
        assert!((r.end - 5.4).abs() < 1e-12, "{r:?}");
        let r = y_range(&s(&[]), 0.0..0.0, 1e-3);
        assert!(r.end > r.start, "{r:?}");
        let r = y_range(&s(&[-MAX_PLOTTED, MAX_PLOTTED]), 0.0..0.0, 1e-3);
        assert!(r.start < -MAX_PLOTTED && r.end > MAX_PLOTTED && (r.end - r.start).is_finite());
        let r = y_range(&s(&[50.0]), 0.0..100.0, 1.0);
        assert_eq!(r.start, 0.0);
    }

    #[test]
    fn confusion_png_of_many_classes_is_bounded() {
        let names: Vec<String> = (0..5000).map(|i| format!("class-{i}")).collect();
        let mut acc = crate::evaluate::Accumulator::new(&names, 5000);
        // 200 images, each of class i predicted as i + 1: 200 distinct mistakes.
        let labels: Vec<i64> = (0..200).collect();
        let ranked: Vec<i64> = labels
            .iter()
            .flat_map(|&y| [(y + 1) % 5000, y, 2, 3, 4])
            .collect();
        acc.add_ranked(&ranked, &labels, 1.0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cm.png");
        confusion_matrix(&acc.report(), &p).unwrap();
        let (w, h) = image::image_dimensions(&p).unwrap();
        assert!(w < 2000 && h < 2000, "{w}x{h}");
    }
}
