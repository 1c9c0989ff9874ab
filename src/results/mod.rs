//! What the node makes of an analysis for people and other systems. For now the rendered
//! views (`infer --out`, later the worklist's overlay and the secondary capture).

pub mod overlay;
