//! The worklist page: one self-contained HTML file (no build step, no external assets) that
//! lists the studies in reading order from `/api/studies`, refreshes itself, and shows a
//! study's overlays on a click.

pub const PAGE: &str = include_str!("worklist.html");
