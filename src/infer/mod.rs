//! Inference: letterbox preprocessing, decoding, NMS, instance masks, drawing.

pub mod draw;
pub mod nms;
pub mod predict;
pub mod segment;
