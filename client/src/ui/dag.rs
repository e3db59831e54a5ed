//! Draws a pipeline's step graph (a DAG) as a standalone SVG string.
//!
//! Layering, crossing reduction and coordinate assignment are done by the
//! [`rust_sugiyama`] crate (network-simplex ranking, barycenter ordering,
//! Brandes–Köpf placement). This module only sizes the boxes, makes long
//! edges routable, packs disconnected components side by side and writes
//! escaped SVG.
//!
//! `rust_sugiyama` does not report where it puts its own dummy vertices, so
//! when some edge skips layers the layout runs twice: a first pass (network
//! simplex ranking) gives each step its layer, then every edge spanning
//! several layers is split into a chain of zero-width "waypoint" vertices and
//! a second pass (longest-path ranking, which keeps those layers and is much
//! faster) lays them out like ordinary vertices. Edges are drawn through the
//! waypoints. Cycles (invalid for a pipeline, but possible input) are broken
//! before layout by reversing depth-first-search back edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use rust_sugiyama::configure::{Config, RankingType};

/// One box of the graph.
pub struct Node<'a> {
    /// Unique key: the step name (or a sweep's name when its trials are grouped). Put in `data-step`.
    pub key: &'a str,
    /// First line of the box (usually = key).
    pub label: &'a str,
    /// State name: queued, ready, assigned, running, succeeded, failed, skipped, cancelled, or "mixed"; put in `data-state`.
    pub state: &'a str,
    /// Optional second line, e.g. "cached", "reused from run 12", "1000 trials: 998 succeeded, 2 running".
    pub detail: Option<&'a str>,
    /// Where a click goes (relative URL, e.g. "/runs/7/steps/train").
    pub href: &'a str,
}

/// Width of every box, in px.
const BOX_W: f64 = 180.0;
/// Height of every box, in px.
const BOX_H: f64 = 44.0;
/// Horizontal gap between boxes of one layer.
const H_GAP: f64 = 20.0;
/// Vertical gap between layers.
const V_GAP: f64 = 40.0;
/// Gap between disconnected components.
const COMPONENT_GAP: f64 = 40.0;
/// Space around the drawing.
const MARGIN: f64 = 20.0;
/// Size of the SVG drawn for an empty graph.
const EMPTY_SIZE: f64 = 40.0;
/// Assumed width of one character of the label, in px.
const CHAR_W: f64 = 7.0;
/// Assumed width of one character of the (smaller) detail line, in px.
const DETAIL_CHAR_W: f64 = 6.0;
/// Horizontal padding inside a box.
const TEXT_PAD: f64 = 10.0;
/// Distance between two layers' centres.
const LAYER_PITCH: f64 = BOX_H + V_GAP;

/// A point in SVG user space.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

/// Final geometry: box centres and, per drawn edge, its endpoints and waypoints.
struct Layout {
    centers: Vec<Point>,
    edges: Vec<Route>,
    width: f64,
    height: f64,
}

/// One edge to draw: its anchor points, joined alternately by a curve
/// (between layers) and a straight line (through a waypoint).
struct Route {
    points: Vec<Point>,
}

/// The graph handed to `rust_sugiyama`: node sizes (real boxes first,
/// waypoints after) and edges, with each original edge's waypoint chain.
struct Expanded {
    sizes: Vec<(f64, f64)>,
    edges: Vec<(usize, usize)>,
    chains: Vec<Vec<usize>>,
}

/// Renders the graph; `edges` are (from, to) indices into `nodes` (from = a dependency, to = the step that needs it). Self-loops and out-of-range indices are ignored (never panic).
pub fn render(nodes: &[Node<'_>], edges: &[(usize, usize)]) -> String {
    if nodes.is_empty() {
        return empty_svg();
    }
    let edges = clean_edges(nodes.len(), edges);
    let layout = compute_layout(nodes.len(), &edges);
    write_svg(nodes, &layout)
}

/// A small valid SVG with no content.
fn empty_svg() -> String {
    let mut out = String::new();
    open_svg(&mut out, EMPTY_SIZE, EMPTY_SIZE);
    out.push_str("</svg>");
    out
}

/// Drops self-loops, out-of-range indices and duplicates; keeps first-seen order.
fn clean_edges(n: usize, edges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut seen = BTreeSet::new();
    edges
        .iter()
        .copied()
        .filter(|&(a, b)| a < n && b < n && a != b && seen.insert((a, b)))
        .collect()
}

/// Lays out `n` boxes and the (already cleaned) edges.
fn compute_layout(n: usize, edges: &[(usize, usize)]) -> Layout {
    let flipped = back_edges(n, edges);
    let (dag_edges, dag_index) = acyclic_edges(edges, &flipped);
    let sizes = vec![box_size(); n];
    let first = run_sugiyama(&sizes, &dag_edges, RankingType::MinimizeEdgeLength);
    let ranks = ranks(n, &first);
    let mut expanded = expand_long_edges(sizes, &dag_edges, &ranks);
    let placed = if expanded.sizes.len() == n {
        first // no edge skips a layer: the first pass is final
    } else {
        anchor_late_sources(&mut expanded, &dag_edges, &ranks);
        // Every edge now spans one layer, so longest-path ranking (fast, no
        // network simplex) reproduces the first pass's layers.
        run_sugiyama(&expanded.sizes, &expanded.edges, RankingType::Up)
    };
    let (positions, width, height) = pack_components(&placed, &expanded.sizes);
    let point = |i: usize| {
        positions
            .get(i)
            .copied()
            .unwrap_or(Point { x: 0.0, y: 0.0 })
    };
    let routes = dag_index
        .iter()
        .zip(&flipped)
        .map(|(&k, &flip)| {
            let (upper, lower) = dag_edges.get(k).copied().unwrap_or((0, 0));
            let chain = expanded.chains.get(k).map_or(&[][..], Vec::as_slice);
            route(
                point(upper),
                chain.iter().map(|&v| point(v)),
                point(lower),
                flip,
            )
        })
        .collect();
    Layout {
        centers: (0..n).map(point).collect(),
        edges: routes,
        width,
        height,
    }
}

/// Marks the edges that close a cycle: the back edges of a depth-first
/// search that visits nodes and edges in input order. Laying those edges out
/// reversed makes the graph acyclic, which `rust_sugiyama`'s ranking needs
/// (its own cycle removal can make it loop forever, see
/// <https://github.com/paddison/rust-sugiyama/issues/25>).
fn back_edges(n: usize, edges: &[(usize, usize)]) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut out: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (i, &(a, b)) in edges.iter().enumerate() {
        if let Some(list) = out.get_mut(a) {
            list.push((i, b));
        }
    }
    let mut mark = vec![Mark::New; n];
    let mut back = vec![false; edges.len()];
    for root in 0..n {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::Open;
        let mut stack = vec![(root, 0)];
        while let Some(top) = stack.last_mut() {
            let (v, pos) = *top;
            match out[v].get(pos) {
                Some(&(e, w)) => {
                    top.1 += 1;
                    match mark[w] {
                        Mark::New => {
                            mark[w] = Mark::Open;
                            stack.push((w, 0));
                        }
                        Mark::Open => back[e] = true,
                        Mark::Done => {}
                    }
                }
                None => {
                    mark[v] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
    back
}

/// The acyclic edge list given to the layout (each edge pointing from the
/// upper to the lower box, duplicates merged) and, per input edge, the index
/// of its layout edge.
fn acyclic_edges(edges: &[(usize, usize)], flipped: &[bool]) -> (Vec<(usize, usize)>, Vec<usize>) {
    let mut index = BTreeMap::new();
    let mut dag_edges = Vec::new();
    let mut of_edge = Vec::with_capacity(edges.len());
    for (&(a, b), &flip) in edges.iter().zip(flipped) {
        let pair = if flip { (b, a) } else { (a, b) };
        let k = *index.entry(pair).or_insert_with(|| {
            dag_edges.push(pair);
            dag_edges.len() - 1
        });
        of_edge.push(k);
    }
    (dag_edges, of_edge)
}

/// The anchor points of an edge: bottom middle of the upper box, top and
/// bottom of each waypoint, top middle of the lower box. Reversed when the
/// edge points upwards (only in cyclic input), so it still ends at its target.
fn route(upper: Point, waypoints: impl Iterator<Item = Point>, lower: Point, flip: bool) -> Route {
    let half = BOX_H / 2.0;
    let mut points = vec![Point {
        x: upper.x,
        y: upper.y + half,
    }];
    for w in waypoints {
        points.push(Point {
            x: w.x,
            y: w.y - half,
        });
        points.push(Point {
            x: w.x,
            y: w.y + half,
        });
    }
    points.push(Point {
        x: lower.x,
        y: lower.y - half,
    });
    if flip {
        points.reverse();
    }
    Route { points }
}

/// Reads each box's layer off its y coordinate in a layout of the real
/// boxes only (layers are `LAYER_PITCH` apart, the top one at 0).
fn ranks(n: usize, components: &[Component]) -> Vec<i64> {
    let mut ranks = vec![0; n];
    for component in components {
        for &(id, (_, y)) in component {
            if let Some(rank) = ranks.get_mut(id) {
                *rank = (y / LAYER_PITCH).round() as i64;
            }
        }
    }
    ranks
}

/// Size of a real box as given to the layout (the crate adds `H_GAP` to both
/// dimensions, so the height is padded to get `V_GAP` between layers).
fn box_size() -> (f64, f64) {
    (BOX_W, BOX_H + V_GAP - H_GAP)
}

/// Size of a waypoint: no width of its own, as tall as a box.
fn waypoint_size() -> (f64, f64) {
    (0.0, BOX_H + V_GAP - H_GAP)
}

/// Splits every edge going down more than one layer into a chain through
/// new waypoint vertices, one per skipped layer. `sizes` holds the real boxes.
fn expand_long_edges(sizes: Vec<(f64, f64)>, edges: &[(usize, usize)], ranks: &[i64]) -> Expanded {
    let mut ex = Expanded {
        sizes,
        edges: Vec::with_capacity(edges.len()),
        chains: Vec::with_capacity(edges.len()),
    };
    for &(from, to) in edges {
        let span = rank_of(ranks, to) - rank_of(ranks, from);
        let chain = push_chain(&mut ex, Some(from), to, span - 1);
        ex.chains.push(chain);
    }
    ex
}

/// Gives each source step that the first pass put below the top layer an
/// invisible chain of waypoints from the top down to it, so that the second
/// pass's longest-path ranking keeps it where it was.
fn anchor_late_sources(ex: &mut Expanded, edges: &[(usize, usize)], ranks: &[i64]) {
    let mut has_pred = vec![false; ranks.len()];
    for &(_, to) in edges {
        if let Some(p) = has_pred.get_mut(to) {
            *p = true;
        }
    }
    for (v, &rank) in ranks.iter().enumerate() {
        if rank > 0 && !has_pred[v] {
            push_chain(ex, None, v, rank);
        }
    }
}

/// Appends `count` waypoints chained from `from` (or starting the chain
/// when `None`) down to `to`, and returns them.
fn push_chain(ex: &mut Expanded, from: Option<usize>, to: usize, count: i64) -> Vec<usize> {
    let mut chain = Vec::new();
    let mut tail = from;
    for _ in 0..count {
        let waypoint = ex.sizes.len();
        ex.sizes.push(waypoint_size());
        if let Some(t) = tail {
            ex.edges.push((t, waypoint));
        }
        chain.push(waypoint);
        tail = Some(waypoint);
    }
    if let Some(t) = tail {
        ex.edges.push((t, to));
    }
    chain
}

/// The layer of vertex `i`, 0 if unknown.
fn rank_of(ranks: &[i64], i: usize) -> i64 {
    ranks.get(i).copied().unwrap_or(0)
}

/// One connected component as returned by the crate: (vertex id, centre).
type Component = Vec<(usize, (f64, f64))>;

/// Calls `rust_sugiyama` on vertices `0..sizes.len()`; returns one list of
/// vertex centres per weakly connected component.
fn run_sugiyama(
    sizes: &[(f64, f64)],
    edges: &[(usize, usize)],
    ranking_type: RankingType,
) -> Vec<Component> {
    let vertices: Vec<(u32, (f64, f64))> = sizes
        .iter()
        .enumerate()
        .filter_map(|(i, &size)| Some((u32::try_from(i).ok()?, size)))
        .collect();
    let known = vertices.len();
    let edges: Vec<(u32, u32)> = edges
        .iter()
        .filter(|&&(a, b)| a < known && b < known)
        .filter_map(|&(a, b)| Some((u32::try_from(a).ok()?, u32::try_from(b).ok()?)))
        .collect();
    let config = Config {
        vertex_spacing: H_GAP,
        ranking_type,
        ..Config::default()
    };
    rust_sugiyama::from_vertices_and_edges(&vertices, &edges, &config)
        .into_iter()
        .map(|(component, _, _)| component)
        .collect()
}

/// Places the components left to right, top-aligned, and turns the crate's
/// relative centres into absolute ones. Returns the centres of all vertices
/// (indexed like `sizes`) and the drawing's width and height.
fn pack_components(components: &[Component], sizes: &[(f64, f64)]) -> (Vec<Point>, f64, f64) {
    let mut positions = vec![Point { x: 0.0, y: 0.0 }; sizes.len()];
    let mut cursor = MARGIN;
    let mut bottom = MARGIN;
    for component in components {
        let (left, right, top, low) = component_bounds(component, sizes);
        let (dx, dy) = (cursor - left, MARGIN - top);
        for &(id, (x, y)) in component {
            if let Some(p) = positions.get_mut(id) {
                *p = Point {
                    x: x + dx,
                    y: y + dy,
                };
            }
        }
        cursor += right - left + COMPONENT_GAP;
        bottom = bottom.max(low + dy);
    }
    let width = (cursor - COMPONENT_GAP + MARGIN).max(EMPTY_SIZE);
    (positions, width, bottom + MARGIN)
}

/// Bounding box (left, right, top, bottom) of a component's boxes.
fn component_bounds(component: &Component, sizes: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    let mut bounds = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(id, (x, y)) in component {
        let half_w = sizes.get(id).map_or(0.0, |s| s.0) / 2.0;
        bounds.0 = bounds.0.min(x - half_w);
        bounds.1 = bounds.1.max(x + half_w);
        bounds.2 = bounds.2.min(y - BOX_H / 2.0);
        bounds.3 = bounds.3.max(y + BOX_H / 2.0);
    }
    if bounds.0 > bounds.1 {
        return (0.0, 0.0, 0.0, 0.0);
    }
    bounds
}

/// Writes the whole document.
fn write_svg(nodes: &[Node<'_>], layout: &Layout) -> String {
    let mut out = String::with_capacity(512 + nodes.len() * 400 + layout.edges.len() * 120);
    open_svg(&mut out, layout.width, layout.height);
    out.push_str(concat!(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" ",
        "markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\">",
        "<path d=\"M0,0L10,5L0,10z\"/></marker></defs>"
    ));
    for route in &layout.edges {
        write_edge(&mut out, route);
    }
    for (node, &center) in nodes.iter().zip(&layout.centers) {
        write_node(&mut out, node, center);
    }
    out.push_str("</svg>");
    out
}

/// Writes the `<svg>` start tag.
fn open_svg(out: &mut String, width: f64, height: f64) {
    let (w, h) = (num(width), num(height));
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">"
    );
}

/// Writes one edge along its anchor points.
fn write_edge(out: &mut String, route: &Route) {
    let Some((&first, rest)) = route.points.split_first() else {
        return;
    };
    let mut d = format!("M{},{}", num(first.x), num(first.y));
    let mut at = first;
    for (i, &p) in rest.iter().enumerate() {
        if i % 2 == 0 {
            curve_to(&mut d, at, p);
        } else {
            let _ = write!(d, "L{},{}", num(p.x), num(p.y));
        }
        at = p;
    }
    let _ = write!(
        out,
        "<path class=\"edge\" fill=\"none\" d=\"{d}\" marker-end=\"url(#arrow)\"/>"
    );
}

/// Appends a cubic Bézier from `a` to `b` that leaves and enters vertically.
fn curve_to(d: &mut String, a: Point, b: Point) {
    let dir = if b.y < a.y { -1.0 } else { 1.0 };
    let k = dir * ((b.y - a.y).abs() / 2.0).max(V_GAP / 2.0);
    let _ = write!(
        d,
        "C{},{} {},{} {},{}",
        num(a.x),
        num(a.y + k),
        num(b.x),
        num(b.y - k),
        num(b.x),
        num(b.y)
    );
}

/// Writes one clickable box centred at `c`.
fn write_node(out: &mut String, node: &Node<'_>, c: Point) {
    let (x, y) = (c.x - BOX_W / 2.0, c.y - BOX_H / 2.0);
    let title = match node.detail {
        Some(detail) => format!("{}\n{}", node.label, detail),
        None => node.label.to_owned(),
    };
    // A box with nowhere to go is not a link (an empty href reloads the page).
    if !node.href.is_empty() {
        let _ = write!(out, "<a href=\"{}\">", escape(node.href));
    }
    let _ = write!(
        out,
        "<g class=\"node\" data-step=\"{}\" data-state=\"{}\"><title>{}</title>\
         <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\"/>",
        escape(node.key),
        escape(node.state),
        escape(&title),
        num(x),
        num(y),
        num(BOX_W),
        num(BOX_H),
    );
    let label_y = if node.detail.is_some() {
        y + 19.0
    } else {
        c.y + 5.0
    };
    write_text(out, None, c.x, label_y, &fit(node.label, CHAR_W));
    if let Some(detail) = node.detail {
        write_text(
            out,
            Some("detail"),
            c.x,
            y + 35.0,
            &fit(detail, DETAIL_CHAR_W),
        );
    }
    out.push_str("</g>");
    if !node.href.is_empty() {
        out.push_str("</a>");
    }
}

/// Writes a centred `<text>` element.
fn write_text(out: &mut String, class: Option<&str>, x: f64, y: f64, text: &str) {
    let class = class.map_or(String::new(), |c| format!(" class=\"{}\"", escape(c)));
    let _ = write!(
        out,
        "<text{class} x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        num(x),
        num(y),
        escape(text)
    );
}

/// Truncates `text` with an ellipsis so it fits in a box, assuming
/// `char_w` px per character.
fn fit(text: &str, char_w: f64) -> String {
    let max = ((BOX_W - 2.0 * TEXT_PAD) / char_w).floor() as usize;
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// XML-escapes `s` for text and attribute values; drops characters XML 1.0
/// cannot hold (control characters other than tab, newline, carriage return).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Formats a coordinate with at most one decimal (and never "-0").
fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == 0.0 || !r.is_finite() {
        return "0".to_owned();
    }
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned node data so tests can build `Node`s from generated strings.
    struct Owned {
        key: String,
        detail: Option<String>,
        href: String,
    }

    fn owned(n: usize) -> Vec<Owned> {
        (0..n)
            .map(|i| Owned {
                key: format!("step-{i}"),
                detail: (i % 3 == 0).then(|| format!("reused from run {i}")),
                href: format!("/runs/7/steps/step-{i}"),
            })
            .collect()
    }

    fn nodes(o: &[Owned]) -> Vec<Node<'_>> {
        o.iter()
            .map(|o| Node {
                key: &o.key,
                label: &o.key,
                state: "succeeded",
                detail: o.detail.as_deref(),
                href: &o.href,
            })
            .collect()
    }

    /// `layers` layers of `per` nodes, each depending on 2 of the previous layer.
    fn layered(layers: usize, per: usize) -> (usize, Vec<(usize, usize)>) {
        let mut edges = Vec::new();
        for l in 1..layers {
            for i in 0..per {
                let to = l * per + i;
                edges.push(((l - 1) * per + i, to));
                edges.push(((l - 1) * per + (i * 3 + 1) % per, to));
            }
        }
        (layers * per, edges)
    }

    /// Deterministic pseudo-random DAG with some isolated nodes and long edges.
    fn random_dag(n: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        let mut edges = Vec::new();
        for to in 1..n {
            if to % 7 == 0 {
                continue;
            }
            for _ in 0..(next() % 3) {
                let from = next() % to;
                if from % 7 != 0 {
                    edges.push((from, to));
                }
            }
        }
        edges
    }

    /// Renders `n` generated nodes with `edges`.
    fn render_n(n: usize, edges: &[(usize, usize)]) -> String {
        let o = owned(n);
        render(&nodes(&o), edges)
    }

    /// Parses the SVG and returns (data-step, x, y, w, h) of every box.
    fn boxes(svg: &str) -> Vec<(String, f64, f64, f64, f64)> {
        let doc = roxmltree::Document::parse(svg).expect("valid XML");
        doc.descendants()
            .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("node"))
            .map(|g| {
                let rect = g.children().find(|c| c.has_tag_name("rect")).expect("rect");
                let f = |a: &str| rect.attribute(a).expect(a).parse::<f64>().expect(a);
                let key = g.attribute("data-step").expect("key").to_owned();
                (key, f("x"), f("y"), f("width"), f("height"))
            })
            .collect()
    }

    fn svg_size(svg: &str) -> (f64, f64) {
        let doc = roxmltree::Document::parse(svg).expect("valid XML");
        let root = doc.root_element();
        let f = |a: &str| root.attribute(a).expect(a).parse::<f64>().expect(a);
        (f("width"), f("height"))
    }

    fn assert_no_overlap(svg: &str) {
        let b = boxes(svg);
        for i in 0..b.len() {
            for j in i + 1..b.len() {
                let (p, q) = (&b[i], &b[j]);
                let apart =
                    p.1 + p.3 <= q.1 || q.1 + q.3 <= p.1 || p.2 + p.4 <= q.2 || q.2 + q.4 <= p.2;
                assert!(apart, "{} overlaps {}", p.0, q.0);
            }
        }
    }

    fn assert_inside_canvas(svg: &str) {
        let (w, h) = svg_size(svg);
        for (k, x, y, bw, bh) in boxes(svg) {
            assert!(
                x >= 0.0 && y >= 0.0 && x + bw <= w && y + bh <= h,
                "{k} outside"
            );
        }
    }

    /// Every dependency's box lies entirely above its dependent's box.
    fn assert_layers_top_down(svg: &str, edges: &[(usize, usize)]) {
        let b = boxes(svg);
        for &(from, to) in edges {
            assert!(
                b[from].2 + b[from].4 < b[to].2,
                "edge {from}->{to} not downward"
            );
        }
    }

    /// Every edge of an acyclic graph has one curve per layer it crosses,
    /// i.e. it is routed through a waypoint in every layer it skips.
    fn assert_routed_through_layers(svg: &str, edges: &[(usize, usize)]) {
        let b = boxes(svg);
        let doc = roxmltree::Document::parse(svg).expect("valid XML");
        let paths: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("edge"))
            .filter_map(|n| n.attribute("d"))
            .collect();
        let edges = clean_edges(b.len(), edges);
        assert_eq!(paths.len(), edges.len());
        for (&(from, to), d) in edges.iter().zip(paths) {
            let layers = ((b[to].2 - b[from].2) / LAYER_PITCH).round() as usize;
            assert_eq!(d.matches('C').count(), layers, "{from}->{to}: {d}");
            assert_eq!(d.matches('L').count(), layers - 1, "{from}->{to}: {d}");
        }
    }

    #[test]
    fn empty_graph_is_small_valid_svg() {
        let svg = render(&[], &[(0, 1)]);
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert_eq!(doc.root_element().attribute("class"), Some("dag"));
        assert!(boxes(&svg).is_empty());
        assert!(!svg.contains("<text"));
        assert_eq!(svg_size(&svg), (EMPTY_SIZE, EMPTY_SIZE));
    }

    #[test]
    fn single_node_without_edges() {
        let svg = render_n(1, &[]);
        assert!(
            svg.starts_with(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\" viewBox=\"0 0 "
            )
        );
        let b = boxes(&svg);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, "step-0");
        assert!(svg.contains("<a href=\"/runs/7/steps/step-0\"><g class=\"node\" data-step=\"step-0\" data-state=\"succeeded\"><title>"));
        assert!(svg.contains("<text class=\"detail\""));
        assert!(!svg.contains("class=\"edge\""));
        assert!(!svg.contains("fill=\"#"));
        assert_inside_canvas(&svg);
    }

    #[test]
    fn viewbox_matches_size() {
        let svg = render_n(3, &[(0, 1), (1, 2)]);
        let (w, h) = svg_size(&svg);
        assert!(svg.contains(&format!("viewBox=\"0 0 {} {}\"", num(w), num(h))));
    }

    #[test]
    fn escapes_everything() {
        let evil = "<script>alert(1)</script>\"'&";
        let n = [
            Node {
                key: evil,
                label: evil,
                state: evil,
                detail: Some(evil),
                href: evil,
            },
            Node {
                key: "b\u{0}\u{1b}",
                label: evil,
                state: "queued",
                detail: None,
                href: "/x?a=1&b=2",
            },
        ];
        let svg = render(&n, &[(0, 1)]);
        assert!(!svg.contains("<script"));
        assert!(!svg.contains("'&"));
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let g = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("node"))
            .expect("node");
        assert_eq!(g.attribute("data-step"), Some(evil));
        assert_eq!(g.attribute("data-state"), Some(evil));
        let a = g.parent().expect("a");
        assert_eq!(a.attribute("href"), Some(evil));
        let title = g
            .children()
            .find(|c| c.has_tag_name("title"))
            .expect("title");
        assert_eq!(title.text(), Some(format!("{evil}\n{evil}").as_str()));
        assert!(svg.contains("href=\"/x?a=1&amp;b=2\""));
    }

    #[test]
    fn long_labels_are_truncated_but_titled() {
        let long = "a_really_long_step_name_that_does_not_fit_in_a_box";
        let detail = "1000 trials: 998 succeeded, 2 running, 0 failed";
        let n = [Node {
            key: long,
            label: long,
            state: "mixed",
            detail: Some(detail),
            href: "/s",
        }];
        let svg = render(&n, &[]);
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(texts.len(), 2);
        for t in &texts {
            assert!(t.ends_with('…'), "{t}");
        }
        assert!(texts[0].chars().count() as f64 * CHAR_W <= BOX_W - 2.0 * TEXT_PAD);
        assert!(texts[1].chars().count() as f64 * DETAIL_CHAR_W <= BOX_W - 2.0 * TEXT_PAD);
        assert!(svg.contains(&format!("<title>{long}\n{detail}</title>")));
        assert_eq!(fit("short", CHAR_W), "short");
    }

    #[test]
    fn edges_one_path_each_and_marker_once() {
        let svg = render_n(4, &[(0, 1), (1, 2), (0, 2), (0, 2), (2, 3)]);
        assert_eq!(svg.matches("<marker id=\"arrow\"").count(), 1);
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 4);
        assert_eq!(svg.matches("marker-end=\"url(#arrow)\"").count(), 4);
    }

    #[test]
    fn edges_start_and_end_at_box_middles() {
        let svg = render_n(2, &[(0, 1)]);
        let b = boxes(&svg);
        let start = format!("M{},{}", num(b[0].1 + BOX_W / 2.0), num(b[0].2 + BOX_H));
        let end = format!("{},{}\"", num(b[1].1 + BOX_W / 2.0), num(b[1].2));
        assert!(svg.contains(&format!("d=\"{start}C")), "{svg}");
        assert!(svg.contains(&end), "{svg}");
    }

    #[test]
    fn long_edges_route_through_waypoints() {
        // 0 -> 1 -> 2 -> 3 and a shortcut 0 -> 3 spanning two layers.
        let svg = render_n(4, &[(0, 1), (1, 2), (2, 3), (0, 3)]);
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let paths: Vec<&str> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("edge"))
            .filter_map(|n| n.attribute("d"))
            .collect();
        assert_eq!(paths.len(), 4);
        assert_eq!(paths[3].matches('L').count(), 2, "{}", paths[3]);
        assert_eq!(paths[3].matches('C').count(), 3, "{}", paths[3]);
        assert_no_overlap(&svg);
    }

    #[test]
    fn bad_edges_are_ignored() {
        let svg = render_n(3, &[(0, 0), (0, 7), (9, 1), (usize::MAX, 0), (1, 2)]);
        assert_eq!(svg.matches("class=\"edge\"").count(), 1);
        assert_eq!(boxes(&svg).len(), 3);
    }

    #[test]
    fn cycles_are_drawn_without_hanging() {
        let svg = render_n(4, &[(0, 1), (1, 2), (2, 0), (2, 3), (3, 2)]);
        assert_eq!(boxes(&svg).len(), 4);
        assert_eq!(svg.matches("class=\"edge\"").count(), 5);
        assert_no_overlap(&svg);
        // The graph from rust-sugiyama issue #25, which makes the crate loop
        // forever when handed to it as is.
        let issue_25 = [
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 0),
            (1, 3),
            (2, 0),
            (2, 3),
            (3, 0),
            (4, 1),
            (4, 2),
        ];
        let svg = render_n(5, &issue_25);
        assert_eq!(svg.matches("class=\"edge\"").count(), 10);
        assert_no_overlap(&svg);
    }

    #[test]
    fn upward_edges_end_at_their_target() {
        // 1 -> 0 closes the cycle and is drawn upwards: from the top of 1 to
        // the bottom of 0.
        let svg = render_n(2, &[(0, 1), (1, 0)]);
        let b = boxes(&svg);
        let (top, bottom) = if b[0].2 < b[1].2 { (0, 1) } else { (1, 0) };
        let up = format!(
            "d=\"M{},{}C",
            num(b[bottom].1 + BOX_W / 2.0),
            num(b[bottom].2)
        );
        let end = format!(
            " {},{}\" marker-end",
            num(b[top].1 + BOX_W / 2.0),
            num(b[top].2 + BOX_H)
        );
        assert!(svg.contains(&up) && svg.contains(&end), "{svg}");
    }

    #[test]
    fn components_side_by_side() {
        // Two chains and two isolated steps.
        let edges = [(0, 1), (1, 2), (3, 4)];
        let svg = render_n(7, &edges);
        let b = boxes(&svg);
        assert_eq!(b.len(), 7);
        assert_no_overlap(&svg);
        assert_inside_canvas(&svg);
        assert_layers_top_down(&svg, &edges);
        let span = |ids: &[usize]| {
            let l = ids.iter().map(|&i| b[i].1).fold(f64::INFINITY, f64::min);
            let r = ids
                .iter()
                .map(|&i| b[i].1 + b[i].3)
                .fold(f64::NEG_INFINITY, f64::max);
            (l, r)
        };
        let groups = [span(&[0, 1, 2]), span(&[3, 4]), span(&[5]), span(&[6])];
        for i in 0..groups.len() {
            for j in i + 1..groups.len() {
                let (a, c) = (groups[i], groups[j]);
                assert!(a.1 <= c.0 || c.1 <= a.0, "components {i} and {j} overlap");
            }
        }
        // All components are top-aligned.
        for i in [0, 3, 5, 6] {
            assert_eq!(b[i].2, MARGIN);
        }
    }

    #[test]
    fn hundred_nodes_no_overlap_and_layered() {
        let (n, edges) = layered(10, 10);
        let svg = render_n(n, &edges);
        assert_eq!(boxes(&svg).len(), 100);
        assert_no_overlap(&svg);
        assert_inside_canvas(&svg);
        assert_layers_top_down(&svg, &edges);
        let ys: BTreeSet<i64> = boxes(&svg).iter().map(|b| b.2 as i64).collect();
        assert_eq!(ys.len(), 10);
        let ys: Vec<i64> = ys.into_iter().collect();
        assert!(ys.windows(2).all(|w| w[1] - w[0] == LAYER_PITCH as i64));
        assert_routed_through_layers(&svg, &edges);
    }

    #[test]
    fn hundred_nodes_with_long_edges() {
        let (n, mut edges) = layered(10, 10);
        edges.extend((3..10).map(|l| ((l - 3) * 10 + l, l * 10 + (l + 4) % 10)));
        edges.push((5, 99));
        let svg = render_n(n, &edges);
        assert_no_overlap(&svg);
        assert_inside_canvas(&svg);
        assert_layers_top_down(&svg, &edges);
        assert_routed_through_layers(&svg, &edges);
    }

    #[test]
    fn random_sixty_nodes_no_overlap() {
        for seed in 0..20 {
            let edges = random_dag(60, seed);
            let svg = render_n(60, &edges);
            assert_eq!(boxes(&svg).len(), 60);
            assert_no_overlap(&svg);
            assert_inside_canvas(&svg);
            assert_layers_top_down(&svg, &edges);
            assert_routed_through_layers(&svg, &edges);
        }
    }

    #[test]
    fn arbitrary_graphs_with_cycles_never_panic() {
        let mut s = 99u64;
        let mut next = move |m: usize| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize % m.max(1)
        };
        for _ in 0..200 {
            let n = next(25);
            let edges: Vec<(usize, usize)> =
                (0..next(60)).map(|_| (next(n + 2), next(n + 2))).collect();
            let svg = render_n(n, &edges);
            assert_eq!(boxes(&svg).len(), n);
            assert_no_overlap(&svg);
            assert_inside_canvas(&svg);
        }
    }

    #[test]
    fn deterministic() {
        let (n, edges) = layered(10, 10);
        assert_eq!(render_n(n, &edges), render_n(n, &edges));
        let edges = random_dag(60, 7);
        assert_eq!(render_n(60, &edges), render_n(60, &edges));
    }

    #[test]
    fn escape_and_num_helpers() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(escape("tab\there\u{7}"), "tab\there");
        assert_eq!(num(-0.01), "0");
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.25), "12.3");
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored --nocapture"]
    fn timings() {
        for (layers, per) in [(10, 10), (30, 10)] {
            let (n, edges) = layered(layers, per);
            let o = owned(n);
            let nodes = nodes(&o);
            let start = std::time::Instant::now();
            let runs = 20;
            for _ in 0..runs {
                std::hint::black_box(render(&nodes, &edges));
            }
            println!("{n} nodes: {:?} per render", start.elapsed() / runs);
        }
    }
}
