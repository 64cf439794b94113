//! Detection evaluation: Ultralytics-style validator metrics and a COCOeval reimplementation.

pub mod coco;
pub mod confusion;
pub mod masks;
pub mod metrics;
pub mod validate;
