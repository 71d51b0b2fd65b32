//! `locus replay`: read any retained window of `locations` by event time while every live
//! group keeps running — export it (NDJSON, CSV, GeoJSON, Parquet), re-run a stage's sink
//! over it, copy it into another topic, move a stopped group's offsets, or stream it to a
//! dashboard. See README.md for the window contract.

mod api;
mod config;
pub mod copy;
mod error;
pub mod format;
pub mod group;
mod table;
pub mod time;
mod window;

pub use api::{ReplayApi, router};
pub use config::ReplayConfig;
pub use error::ReplayError;
pub use table::{Row, Sorted, Strings};
pub use window::{
    BBox, Filter, Kept, PartitionRead, Report, Scan, Window, by_user_then_time, collect,
    collect_sorted,
};
