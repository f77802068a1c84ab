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

/// Draws `metrics.jsonl` of `run_dir` as `run_dir/training-curves.png`: train and validation
/// loss, train and validation accuracy, and the learning rate, per epoch. Returns the path.
pub fn training_curves(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let epochs = metrics::read(&run_dir.join(metrics::METRICS_FILE))?;
    if epochs.is_empty() {
        anyhow::bail!(
            "{}: no finished epoch to plot",
            run_dir.join(metrics::METRICS_FILE).display()
        );
    }
    let out = run_dir.join(TRAINING_CURVES);
    draw_training_curves(&epochs, &out)?;
    Ok(out)
}

/// Draws training curves of `epochs` into the PNG file `out`.
pub fn draw_training_curves(epochs: &[EpochMetrics], out: &Path) -> anyhow::Result<()> {
    let (w, h) = (1500u32, 480u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    draw_curves(&mut buf, (w, h), epochs)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
    save_png(out, &buf, w, h)
}

fn draw_curves(buf: &mut [u8], size: (u32, u32), epochs: &[EpochMetrics]) -> DrawResult<()> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let x_max = epochs.last().map_or(1, |m| m.epoch).max(2) as f64;
    let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let loss = [
        ("train loss", TRAIN, series(|m| m.train_loss)),
        ("val loss", VAL, series(|m| m.val_loss)),
    ];
    let acc = [
        ("train acc %", TRAIN, series(|m| m.train_acc * 100.0)),
        ("val acc %", VAL, series(|m| m.val_acc * 100.0)),
    ];
    let lr = [("learning rate", LR, series(|m| m.lr))];
    let loss_max = max_of(&loss).max(1e-3) * 1.08;
    // Legends where the curves usually are not: losses fall, accuracies rise.
    use SeriesLabelPosition::{LowerRight, UpperRight};
    panel(&panels[0], "Loss", x_max, 0.0..loss_max, &loss, UpperRight)?;
    panel(
        &panels[1],
        "Accuracy (%)",
        x_max,
        0.0..100.0,
        &acc,
        LowerRight,
    )?;
    let lr_max = max_of(&lr).max(1e-12) * 1.08;
    panel(
        &panels[2],
        "Learning rate",
        x_max,
        0.0..lr_max,
        &lr,
        UpperRight,
    )?;
    root.present()?;
    Ok(())
}

fn max_of(series: &[Series]) -> f64 {
    series
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|p| p.1))
        .fold(0.0, f64::max)
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    x_max: f64,
    y: std::ops::Range<f64>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> DrawResult<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 26).into_font().style(FontStyle::Bold))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(1.0..x_max, y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(x_max.min(10.0) as usize)
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
/// row-normalised rate and labelled with counts) into the PNG file `out`.
pub fn confusion_matrix(report: &Report, out: &Path) -> anyhow::Result<()> {
    let n = report.classes.len().max(1) as u32;
    let cell = (640 / n).clamp(24, 90);
    let label_w = report
        .classes
        .iter()
        .map(|c| c.chars().count() as u32)
        .max()
        .unwrap_or(4)
        * 9
        + 30;
    let (w, h) = ((label_w + n * cell + 20).max(520), 80 + n * cell + 50);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    draw_confusion(&mut buf, (w, h), report, cell, label_w)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))?;
    save_png(out, &buf, w, h)
}

fn draw_confusion(
    buf: &mut [u8],
    size: (u32, u32),
    report: &Report,
    cell: u32,
    label_w: u32,
) -> DrawResult<()> {
    register_font();
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, y0) = (label_w as i32, 80i32);
    let cell = cell as i32;
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
    root.draw(&Text::new(
        "rows: true class, columns: predicted class",
        (10, 40),
        font(16.0),
    ))?;
    let text_px = (cell as f64 * 0.32).clamp(11.0, 18.0);
    for (r, row) in report.confusion.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
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
    let n = report.classes.len() as i32;
    for (i, name) in report.classes.iter().enumerate() {
        let y = y0 + i as i32 * cell + cell / 2 - 8;
        root.draw(&Text::new(name.clone(), (8, y), font(16.0)))?;
    }
    // Column names under the matrix, staggered when cells are narrow.
    for (i, name) in report.classes.iter().enumerate() {
        let tw = (name.chars().count() as f64 * 14.0 * 0.55) as i32;
        let x = x0 + i as i32 * cell + ((cell - tw) / 2).max(2);
        let stagger = if cell < 70 { (i % 2) as i32 * 18 } else { 0 };
        let y = y0 + n * cell + 6 + stagger;
        root.draw(&Text::new(name.clone(), (x, y), font(14.0)))?;
    }
    root.present()?;
    Ok(())
}

fn save_png(out: &Path, rgb: &[u8], w: u32, h: u32) -> anyhow::Result<()> {
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
}
