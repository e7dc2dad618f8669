//! PNG plots (plotters, with a bundled DejaVu Sans so no system fonts are needed).
//! The chart files are native only: in a page (wasm32) plotters draws text
//! through a canvas, not the bundled font, and there are no files to write.

use plotters::prelude::*;

#[cfg(not(target_arch = "wasm32"))]
pub use files::{heatmap, lines};

/// Distinct colours for series.
pub fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// One line series: a label and (x, y) points; `dots` adds markers.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

/// Dark blue → green → yellow.
pub fn ramp(t: f64) -> RGBColor {
    let stops =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let x = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(stops[i].0, stops[i + 1].0), mix(stops[i].1, stops[i + 1].1), mix(stops[i].2, stops[i + 1].2))
}

/// The chart files (native only, see above).
#[cfg(not(target_arch = "wasm32"))]
mod files {
    use std::path::Path;
    use std::sync::Once;

    use anyhow::{Result, anyhow};
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};

    use super::{Series, palette, ramp};

    const FONT: &str = "sans-serif";

    fn ensure_font() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // Only fails on malformed font bytes, which a bundled file is not.
            let _ = register_font(FONT, FontStyle::Normal, include_bytes!("../../assets/DejaVuSans.ttf"));
        });
    }

    fn err(e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("drawing a plot: {e}")
    }

    /// A line chart with a legend, written to `path`.
    pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
        ensure_font();
        let all: Vec<(f64, f64)> =
            series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
        if all.is_empty() {
            return Err(anyhow!("nothing to plot for {title}"));
        }
        let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.08).max(1e-6);
        // Layers, heads and steps are whole numbers: no fractional ticks, and one
        // tick per layer when there are few.
        let whole = all.iter().all(|p| p.0.fract() == 0.0);
        let whole_text = |x: &f64| format!("{x:.0}");
        let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label).y_desc(y_label).label_style((FONT, 14)).axis_desc_style((FONT, 16));
        if whole {
            mesh.x_label_formatter(&whole_text);
            if x1 - x0 <= 32.0 {
                mesh.x_labels((x1 - x0) as usize + 1);
            }
        }
        mesh.draw().map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let color = palette(i);
            let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if s.dots {
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }

    /// A heat map of `values[row][col]` in [lo, hi] (viridis-like ramp), rows top to bottom.
    pub fn heatmap(
        path: &Path,
        title: &str,
        x_label: &str,
        y_label: &str,
        values: &[Vec<f64>],
        (lo, hi): (f64, f64),
    ) -> Result<()> {
        ensure_font();
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 {
            return Err(anyhow!("nothing to plot for {title}"));
        }
        let root = BitMapBackend::new(path, (760, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{title}  (dark {lo:.2} … yellow {hi:.2})"), (FONT, 20))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(52)
            // Cell i spans i ± 0.5, so the whole-number ticks sit at cell centres.
            .build_cartesian_2d(-0.5..cols as f64 - 0.5, -0.5..rows as f64 - 0.5)
            .map_err(err)?;
        let whole_text = |v: &f64| format!("{v:.0}");
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols.min(32))
            .y_labels(rows.min(32))
            .x_label_formatter(&whole_text)
            .y_label_formatter(&whole_text)
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(err)?;
        chart
            .draw_series((0..rows).flat_map(|r| {
                (0..cols).map(move |c| {
                    let t = ((values[r][c] - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0);
                    let (x, y) = (c as f64, r as f64);
                    Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], ramp(t).filled())
                })
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
}
