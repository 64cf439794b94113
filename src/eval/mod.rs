//! Detection evaluation: Ultralytics-style validator metrics and a COCOeval reimplementation.

pub mod coco;
pub mod metrics;
pub mod validate;
