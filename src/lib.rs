//! yolodistill: YOLO detection models, Ultralytics checkpoints, inference,
//! training and teacher → student distillation, in Rust on burn.

pub mod cli;
pub mod data;
pub mod distill;
pub mod eval;
pub mod export;
pub mod infer;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod files;
pub mod options;
pub mod pixels;
pub mod report;
pub mod run;
pub mod task;
pub mod train;
pub mod weights;

pub use device::{default_device, is_cpu, reads_so_far, select_device};

mod device;
