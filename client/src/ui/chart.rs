//! Training-curve charts rendered to SVG with `plotters`.
//!
//! Text is emitted as SVG `<text>` elements naming the generic `sans-serif`
//! family; the viewer picks the actual font. No font file is read or
//! embedded: with plotters' `ttf` and `ab_glyph` features off, plotters uses
//! its built-in size estimate for layout, and the SVG backend writes text
//! (XML-escaped) instead of rasterising glyphs.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 640;
/// Height of every chart, in pixels.
pub const HEIGHT: u32 = 360;
/// Above this many points in total, only the best series keeps its markers.
pub const MARKER_LIMIT: usize = 5_000;
/// Above this many series, the legend shows only the best series and a count.
pub const LEGEND_LIMIT: usize = 12;
/// Values whose magnitude exceeds this are skipped like NaN and infinity:
/// the axis span computed from them could overflow.
pub const MAX_ABS_VALUE: f64 = 1e300;
/// The class attribute every data-point marker carries (`<circle class="point" …>`).
pub const POINT_CLASS: &str = "point";

/// Text shown in place of the plot when there is nothing to draw.
const NO_VALUES: &str = "no values";
/// Fraction of the data span added on both sides of each axis.
const MARGIN_FRACTION: f64 = 0.05;
/// Spans narrower than this fraction of the values' magnitude count as constant.
const MIN_RELATIVE_SPAN: f64 = 1e-9;
/// Magnitudes and spans below this count as zero.
const MIN_ABSOLUTE: f64 = 1e-200;
/// Font family written into every `<text>` element.
const FONT: &str = "sans-serif";
/// Colours for Normal series; red is kept for the best series, grey for faint ones.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// Colour of the best series.
const BEST_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Colour of faint series.
const FAINT_COLOR: RGBColor = RGBColor(0x90, 0x90, 0x90);

/// How prominently a series is drawn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Emphasis {
    /// An ordinary series.
    Normal,
    /// The best series: drawn last, thicker, in red, labelled " (best)".
    Best,
    /// A background series: thin and light, for overlaying many trials.
    Faint,
}

/// One curve of a chart.
pub struct Series<'a> {
    /// Legend text, e.g. "run 7" or "train[lr=0.1]".
    pub label: &'a str,
    /// (x, y) in order of report; x is the metric's `step` (or the report index when it had none).
    pub points: &'a [(f64, f64)],
    /// How prominently the series is drawn.
    pub emphasis: Emphasis,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// plotters reported an error while drawing; the message is its description.
    #[error("chart drawing failed: {0}")]
    Draw(String),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(err: DrawingAreaErrorKind<E>) -> Self {
        ChartError::Draw(err.to_string())
    }
}

/// One chart: every series as a line with a marker per point.
///
/// Points with a NaN, infinite or huge (beyond [`MAX_ABS_VALUE`]) coordinate
/// are skipped; series left without points are left out. When no point is
/// left, the chart says "no values". Markers are `<circle class="point">`
/// elements, one per point, as long as the total is at most [`MARKER_LIMIT`];
/// beyond that only the best series keeps them. The output is deterministic.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<String, ChartError> {
    let title = sanitize_text(title);
    let curves = prepare(series);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        match Bounds::of(&curves) {
            None => draw_no_values(&root, &title)?,
            Some(bounds) => {
                let texts = Texts {
                    title: &title,
                    x_label: &sanitize_text(x_label),
                    y_label: &sanitize_text(y_label),
                };
                draw_chart(&root, &texts, &curves, &bounds)?;
            }
        }
        root.present()?;
    }
    Ok(mark_points(&svg))
}

/// The caller's texts, already sanitised.
struct Texts<'t> {
    title: &'t str,
    x_label: &'t str,
    y_label: &'t str,
}

/// A series reduced to its drawable points.
struct Curve {
    label: String,
    points: Vec<(f64, f64)>,
    emphasis: Emphasis,
    /// Position among the Normal series, for picking a colour.
    color_index: usize,
}

/// Replaces characters that XML 1.0 forbids (or that would break a line of
/// text) so that the escaped output always parses. plotters-svg itself
/// escapes `<`, `>`, `&`, `"` and `'`.
fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            '\u{FFFE}' | '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// Whether a value can be placed on an axis.
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_ABS_VALUE
}

/// Keeps the drawable points of each series, drops empty series, and orders
/// them for drawing: faint first, then normal, best last (on top).
fn prepare(series: &[Series<'_>]) -> Vec<Curve> {
    let mut normal_seen = 0;
    let mut curves: Vec<Curve> = series
        .iter()
        .filter_map(|s| {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| plottable(x) && plottable(y))
                .collect();
            if points.is_empty() {
                return None;
            }
            let color_index = normal_seen;
            if s.emphasis == Emphasis::Normal {
                normal_seen += 1;
            }
            Some(Curve {
                label: sanitize_text(s.label),
                points,
                emphasis: s.emphasis,
                color_index,
            })
        })
        .collect();
    curves.sort_by_key(|c| draw_rank(c.emphasis));
    curves
}

/// Drawing order of an emphasis: lower is drawn first (underneath).
fn draw_rank(emphasis: Emphasis) -> u8 {
    match emphasis {
        Emphasis::Faint => 0,
        Emphasis::Normal => 1,
        Emphasis::Best => 2,
    }
}

/// The axis ranges of a chart.
struct Bounds {
    x: Range<f64>,
    y: Range<f64>,
}

impl Bounds {
    /// Ranges covering every point with a margin; `None` when there is no point.
    fn of(curves: &[Curve]) -> Option<Bounds> {
        let mut points = curves.iter().flat_map(|c| c.points.iter().copied());
        let (x0, y0) = points.next()?;
        let init = (x0, x0, y0, y0);
        let (x_lo, x_hi, y_lo, y_hi) = points.fold(init, |(a, b, c, d), (x, y)| {
            (a.min(x), b.max(x), c.min(y), d.max(y))
        });
        Some(Bounds {
            x: axis_range(x_lo, x_hi),
            y: axis_range(y_lo, y_hi),
        })
    }
}

/// The range shown for data spanning `lo..=hi`: widened when (nearly)
/// constant, then padded by [`MARGIN_FRACTION`] on both sides.
fn axis_range(lo: f64, hi: f64) -> Range<f64> {
    let (lo, hi) = widen(lo, hi);
    let pad = (hi - lo) * MARGIN_FRACTION;
    (lo - pad)..(hi + pad)
}

/// Gives a (nearly) zero-width span a width: ±10 % of the value, or ±1 around zero.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    let magnitude = lo.abs().max(hi.abs());
    if span >= MIN_ABSOLUTE && span >= magnitude * MIN_RELATIVE_SPAN {
        return (lo, hi);
    }
    let half = if magnitude >= MIN_ABSOLUTE {
        magnitude * 0.1
    } else {
        1.0
    };
    let mid = lo / 2.0 + hi / 2.0;
    (mid - half, mid + half)
}

/// How the tick labels of one axis are written.
struct TickFormat {
    scientific: bool,
    decimals: usize,
}

impl TickFormat {
    /// A format fine enough for ticks on `range` (at most ~10 ticks).
    fn for_range(range: &Range<f64>) -> TickFormat {
        let span = range.end - range.start;
        let magnitude = range.start.abs().max(range.end.abs());
        let scientific = !(1e-3..1e6).contains(&magnitude);
        let digits = if scientific {
            (magnitude / span).log10().ceil() + 1.0
        } else {
            -span.log10().ceil() + 2.0
        };
        TickFormat {
            scientific,
            decimals: digits.clamp(0.0, 12.0) as usize,
        }
    }

    /// The label of one tick.
    fn format(&self, v: f64) -> String {
        if v == 0.0 {
            return "0".to_string();
        }
        if self.scientific {
            let text = format!("{:.*e}", self.decimals, v);
            match text.split_once('e') {
                Some((mantissa, exponent)) => format!("{}e{exponent}", trim_zeros(mantissa)),
                None => text,
            }
        } else {
            let text = trim_zeros(&format!("{:.*}", self.decimals, v)).to_string();
            if text == "-0" { "0".to_string() } else { text }
        }
    }
}

/// Drops trailing zeros after a decimal point, and the point itself if bare.
fn trim_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// The whole chart when there is no value to plot: the title and "no values".
fn draw_no_values(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
) -> Result<(), ChartError> {
    let area = root.titled(title, (FONT, 20))?;
    let style = TextStyle::from((FONT, 16).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let (w, h) = area.dim_in_pixel();
    area.draw_text(NO_VALUES, &style, (w as i32 / 2, h as i32 / 2))?;
    Ok(())
}

/// Axes, curves and legend.
fn draw_chart(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    texts: &Texts<'_>,
    curves: &[Curve],
    bounds: &Bounds,
) -> Result<(), ChartError> {
    let mut chart = ChartBuilder::on(root)
        .caption(texts.title, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(bounds.x.clone(), bounds.y.clone())?;
    draw_mesh(&mut chart, texts, bounds)?;
    let total: usize = curves.iter().map(|c| c.points.len()).sum();
    let crowded = curves.len() > LEGEND_LIMIT;
    if crowded {
        let caption = format!("{} curves", curves.len());
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
            .label(caption);
    }
    for curve in curves {
        let look = Look::of(curve, crowded);
        let markers = total <= MARKER_LIMIT || curve.emphasis == Emphasis::Best;
        let in_legend = !crowded || curve.emphasis == Emphasis::Best;
        draw_curve(&mut chart, curve, &look, markers, in_legend)?;
    }
    // Never empty: either every curve is labelled or the count caption is.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

/// The chart type used throughout.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Grid, axes, tick labels and axis descriptions.
fn draw_mesh(
    chart: &mut Chart<'_, '_>,
    texts: &Texts<'_>,
    bounds: &Bounds,
) -> Result<(), ChartError> {
    let x_format = TickFormat::for_range(&bounds.x);
    let y_format = TickFormat::for_range(&bounds.y);
    let x_ticks = |v: &f64| x_format.format(*v);
    let y_ticks = |v: &f64| y_format.format(*v);
    chart
        .configure_mesh()
        .x_desc(texts.x_label)
        .y_desc(texts.y_label)
        .x_label_formatter(&x_ticks)
        .y_label_formatter(&y_ticks)
        .bold_line_style(BLACK.mix(0.08))
        .light_line_style(TRANSPARENT)
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 11))
        .draw()?;
    Ok(())
}

/// Colour, line width and marker radius of one curve.
struct Look {
    color: RGBAColor,
    width: u32,
    radius: u32,
}

impl Look {
    /// The look of `curve`; `crowded` charts draw normal series thinner and lighter.
    fn of(curve: &Curve, crowded: bool) -> Look {
        match curve.emphasis {
            Emphasis::Best => Look {
                color: BEST_COLOR.mix(1.0),
                width: 3,
                radius: 3,
            },
            Emphasis::Faint => Look {
                color: FAINT_COLOR.mix(0.25),
                width: 1,
                radius: 2,
            },
            Emphasis::Normal => {
                let base = PALETTE[curve.color_index % PALETTE.len()];
                let (alpha, width) = if crowded { (0.35, 1) } else { (0.85, 2) };
                Look {
                    color: base.mix(alpha),
                    width,
                    radius: 2,
                }
            }
        }
    }

    /// Style of the line.
    fn line(&self) -> ShapeStyle {
        self.color.stroke_width(self.width)
    }
}

/// One curve: its line (when it has two points or more), its markers if
/// wanted, and its legend entry if wanted.
fn draw_curve(
    chart: &mut Chart<'_, '_>,
    curve: &Curve,
    look: &Look,
    markers: bool,
    in_legend: bool,
) -> Result<(), ChartError> {
    let line = look.line();
    let path = (curve.points.len() > 1).then(|| PathElement::new(curve.points.clone(), line));
    let anno = chart.draw_series(path)?;
    if in_legend {
        let label = match curve.emphasis {
            Emphasis::Best => format!("{} (best)", curve.label),
            _ => curve.label.clone(),
        };
        anno.label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
    }
    if markers {
        let fill = look.color.filled();
        let dots = curve
            .points
            .iter()
            .map(|&p| Circle::new(p, look.radius, fill));
        chart.draw_series(dots)?;
    }
    Ok(())
}

/// Tags every `<circle>` (all of them are data-point markers) with
/// [`POINT_CLASS`]. Text content is escaped, so `<circle` only occurs in tags.
fn mark_points(svg: &str) -> String {
    svg.replace("<circle ", &format!("<circle class=\"{POINT_CLASS}\" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series<'a>(label: &'a str, points: &'a [(f64, f64)], emphasis: Emphasis) -> Series<'a> {
        Series {
            label,
            points,
            emphasis,
        }
    }

    fn circles(svg: &str) -> usize {
        svg.matches("<circle").count()
    }

    fn parse_ok(svg: &str) {
        if let Err(e) = roxmltree::Document::parse(svg) {
            panic!("invalid XML: {e}\n{svg}");
        }
    }

    fn curve(n: usize, offset: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64, offset + 1.0 / (1.0 + i as f64)))
            .collect()
    }

    fn chart(series: &[Series<'_>]) -> String {
        match line_chart("loss", "step", "value", series) {
            Ok(svg) => svg,
            Err(e) => panic!("chart failed: {e}"),
        }
    }

    #[test]
    fn one_circle_per_point_under_limit() {
        let a = curve(10, 0.0);
        let b = curve(25, 0.5);
        let c = curve(7, 1.0);
        let svg = chart(&[
            series("a", &a, Emphasis::Normal),
            series("b", &b, Emphasis::Best),
            series("c", &c, Emphasis::Faint),
        ]);
        assert_eq!(circles(&svg), 42);
        assert_eq!(svg.matches("<circle class=\"point\" ").count(), 42);
        parse_ok(&svg);
    }

    #[test]
    fn exactly_at_limit_keeps_all_markers() {
        let a = curve(MARKER_LIMIT - 1, 0.0);
        let b = curve(1, 0.0);
        let svg = chart(&[
            series("a", &a, Emphasis::Normal),
            series("b", &b, Emphasis::Normal),
        ]);
        assert_eq!(circles(&svg), MARKER_LIMIT);
    }

    #[test]
    fn above_limit_only_best_keeps_markers() {
        let big = curve(MARKER_LIMIT, 0.0);
        let best = curve(30, 0.2);
        let svg = chart(&[
            series("big", &big, Emphasis::Normal),
            series("best", &best, Emphasis::Best),
        ]);
        assert_eq!(circles(&svg), 30);
        let svg = chart(&[
            series("big", &big, Emphasis::Normal),
            series("x", &best, Emphasis::Faint),
        ]);
        assert_eq!(circles(&svg), 0);
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn single_point_series_shows_its_marker() {
        let one = [(3.0, 0.25)];
        let svg = chart(&[series("solo", &one, Emphasis::Normal)]);
        assert_eq!(circles(&svg), 1);
        assert!(svg.contains("solo"));
        assert!(!svg.contains(NO_VALUES));
        parse_ok(&svg);
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let pts = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (f64::INFINITY, 0.5),
            (2.0, f64::NEG_INFINITY),
            (f64::NAN, f64::NAN),
            (3.0, 0.25),
            (4.0, 1e301),
        ];
        let svg = chart(&[series("run", &pts, Emphasis::Normal)]);
        assert_eq!(circles(&svg), 2);
        assert!(!svg.contains("NaN"));
        assert!(!svg.to_lowercase().contains("inf"));
        parse_ok(&svg);
    }

    #[test]
    fn empty_input_says_no_values() {
        let nan = [(f64::NAN, 1.0), (0.0, f64::INFINITY)];
        for input in [
            vec![],
            vec![series("a", &[], Emphasis::Normal)],
            vec![
                series("a", &[], Emphasis::Best),
                series("b", &nan, Emphasis::Faint),
            ],
        ] {
            let svg = chart(&input);
            assert!(svg.contains(NO_VALUES));
            assert!(svg.starts_with("<svg"));
            assert_eq!(circles(&svg), 0);
            parse_ok(&svg);
        }
    }

    #[test]
    fn constant_series_and_single_x_get_a_range() {
        let flat = [(0.0, 0.5), (1.0, 0.5), (2.0, 0.5)];
        let same_x = [(5.0, 0.1), (5.0, 0.9)];
        let zeros = [(0.0, 0.0), (0.0, 0.0)];
        let huge = [(1e300, -1e300), (-1e300, 1e300)];
        let tiny = [(1e-250, 5e-324), (2e-250, 0.0)];
        let near = [(1.0, 1.0), (2.0, 1.0 + f64::EPSILON)];
        for pts in [&flat[..], &same_x, &zeros, &huge, &tiny, &near] {
            let svg = chart(&[series("s", pts, Emphasis::Normal)]);
            assert_eq!(circles(&svg), pts.len());
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
            parse_ok(&svg);
        }
    }

    #[test]
    fn axis_range_widens_and_pads() {
        let r = axis_range(0.5, 0.5);
        assert!(r.start < 0.5 && r.end > 0.5);
        let r = axis_range(0.0, 0.0);
        assert!(r.start <= -1.0 && r.end >= 1.0);
        let r = axis_range(0.0, 10.0);
        assert!((r.start + 0.5).abs() < 1e-12 && (r.end - 10.5).abs() < 1e-12);
        let r = axis_range(-MAX_ABS_VALUE, MAX_ABS_VALUE);
        assert!((r.end - r.start).is_finite());
    }

    #[test]
    fn tick_format_is_readable() {
        let f = TickFormat::for_range(&(0.0..100.0));
        assert_eq!(f.format(20.0), "20");
        let f = TickFormat::for_range(&(0.0..1.0));
        assert_eq!(f.format(0.30000000000000004), "0.3");
        assert_eq!(f.format(-0.0), "0");
        let f = TickFormat::for_range(&(0.0..2e7));
        assert_eq!(f.format(1.5e7), "1.5e7");
        let f = TickFormat::for_range(&(1e-6..5e-6));
        assert_eq!(f.format(2e-6), "2e-6");
    }

    #[test]
    fn best_is_last_thick_red_and_labelled() {
        let a = curve(5, 0.0);
        let b = curve(5, 0.3);
        let c = curve(5, 0.6);
        let svg = chart(&[
            series("first", &a, Emphasis::Best),
            series("second", &b, Emphasis::Normal),
            series("third", &c, Emphasis::Faint),
        ]);
        assert!(svg.contains("first (best)"));
        assert!(!svg.contains("second (best)"));
        let lines: Vec<&str> = svg.lines().filter(|l| l.starts_with("<polyline")).collect();
        let best = "stroke=\"#D62728\" stroke-width=\"3\"";
        assert!(lines.iter().any(|l| l.contains(best)));
        let last_data = lines.iter().rev().find(|l| {
            l.split("points=\"")
                .nth(1)
                .is_some_and(|p| p.split(' ').count() > 3)
        });
        assert!(
            last_data.is_some_and(|l| l.contains(best)),
            "best not on top"
        );
        let faint = lines.iter().find(|l| l.contains("#909090"));
        assert!(faint.is_some_and(|l| l.contains("opacity=\"0.25\"") && l.contains("stroke-width=\"1\"")));
    }

    #[test]
    fn many_series_legend_shows_best_and_count() {
        let data: Vec<Vec<(f64, f64)>> = (0..1000).map(|i| curve(6, i as f64 * 0.001)).collect();
        let labels: Vec<String> = (0..1000).map(|i| format!("trial {i}")).collect();
        let all: Vec<Series<'_>> = data
            .iter()
            .zip(&labels)
            .enumerate()
            .map(|(i, (d, l))| {
                let emphasis = if i == 7 {
                    Emphasis::Best
                } else {
                    Emphasis::Normal
                };
                series(l, d, emphasis)
            })
            .collect();
        let svg = chart(&all);
        assert!(svg.contains("1000 curves"));
        assert!(svg.contains("trial 7 (best)"));
        assert!(!svg.contains("trial 8<") && !svg.contains("trial 8\n"));
        assert!(svg.contains("opacity=\"0.35\""));
        assert_eq!(circles(&svg), 6);
        parse_ok(&svg);
    }

    #[test]
    fn many_series_without_best_show_only_the_count() {
        let data: Vec<Vec<(f64, f64)>> = (0..13).map(|i| curve(3, i as f64)).collect();
        let all: Vec<Series<'_>> = data
            .iter()
            .map(|d| series("someone", d, Emphasis::Faint))
            .collect();
        let svg = chart(&all);
        assert!(svg.contains("13 curves"));
        assert!(!svg.contains("someone"));
        parse_ok(&svg);
    }

    #[test]
    fn few_series_all_in_legend() {
        let data: Vec<Vec<(f64, f64)>> = (0..LEGEND_LIMIT).map(|i| curve(3, i as f64)).collect();
        let labels: Vec<String> = (0..LEGEND_LIMIT).map(|i| format!("run {i}")).collect();
        let all: Vec<Series<'_>> = data
            .iter()
            .zip(&labels)
            .map(|(d, l)| series(l, d, Emphasis::Normal))
            .collect();
        let svg = chart(&all);
        for l in &labels {
            assert!(svg.contains(&format!("{l}\n")), "missing {l}");
        }
        assert!(!svg.contains("curves"));
        assert_eq!(circles(&svg), LEGEND_LIMIT * 3);
    }

    #[test]
    fn caller_text_is_escaped() {
        let nasty = "<script>alert(1)</script> \"'& \u{1}\u{FFFF}";
        let pts = curve(4, 0.0);
        let svg = match line_chart(nasty, nasty, nasty, &[series(nasty, &pts, Emphasis::Best)]) {
            Ok(svg) => svg,
            Err(e) => panic!("{e}"),
        };
        assert!(!svg.contains("<script"));
        assert!(svg.contains("&lt;script&gt;"));
        let doc = match roxmltree::Document::parse(&svg) {
            Ok(doc) => doc,
            Err(e) => panic!("invalid XML: {e}"),
        };
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        let wanted = "<script>alert(1)</script> \"'&";
        assert!(
            texts.iter().filter(|t| t.contains(wanted)).count() >= 4,
            "{texts:?}"
        );
        let empty = match line_chart(nasty, nasty, nasty, &[]) {
            Ok(svg) => svg,
            Err(e) => panic!("{e}"),
        };
        assert!(!empty.contains("<script"));
        parse_ok(&empty);
    }

    #[test]
    fn output_is_deterministic_and_sized() {
        let a = curve(100, 0.0);
        let b = curve(50, 0.4);
        let input = [
            series("a", &a, Emphasis::Normal),
            series("b", &b, Emphasis::Best),
        ];
        let first = chart(&input);
        assert_eq!(first, chart(&input));
        assert!(first.starts_with(&format!("<svg width=\"{WIDTH}\" height=\"{HEIGHT}\"")));
    }

    #[test]
    fn sanitize_replaces_forbidden_characters() {
        assert_eq!(sanitize_text("a\nb\u{0}c\u{FFFE}"), "a b c\u{FFFD}");
    }
}
