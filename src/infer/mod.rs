//! Inference: letterbox preprocessing, decoding, NMS, drawing.

pub mod draw;
pub mod nms;
pub mod predict;
