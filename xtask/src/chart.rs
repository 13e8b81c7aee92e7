//! The serving chart of BENCHMARKS.md: aggregate output tokens/s of the chat mix against
//! concurrent clients, one line per system, from the JSON the `serving` bench writes, with the
//! single-sequence decode limit the machine's memory bandwidth allows as a dashed line.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;

/// One line of the chart.
struct Series {
    system: String,
    points: Vec<(f64, f64)>,
}

fn chat_series(report: &Value) -> Vec<Series> {
    report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| Series {
            system: run["system"].as_str().unwrap_or("?").to_owned(),
            points: run["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["mix"] == "chat")
                .filter_map(|r| Some((r["clients"].as_f64()?, r["tokens_per_s"].as_f64()?)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Reads the bench's JSON at `json` and writes the chart as SVG to `svg`.
pub(crate) fn write(json: &Path, svg: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let report: Value = serde_json::from_str(&text).context("the serving bench's JSON")?;
    let series = chat_series(&report);
    let limit = report["decode_limit_tokens_per_s"].as_f64().unwrap_or(0.0);
    let threads = report["threads"].as_u64().unwrap_or(0);
    let max_clients = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_tps = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(limit, f64::max);
    if let Some(dir) = svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(svg, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("SmolLM2-135M Q4_1, {threads} threads: chat throughput"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..max_clients * 1.15).log_scale(), 0.0..max_tps * 1.15)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("output tokens/s (all clients)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.system.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(draw_error)?;
    }
    if limit > 0.0 {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(DashedLineSeries::new(
                [(1.0, limit), (max_clients * 1.15, limit)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(draw_error)?
            .label("memory-bandwidth limit, one sequence")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}
