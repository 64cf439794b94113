//! Training data: dataset YAML and label scanning, augmentations, and batch loaders.
//! Images are plain 8-bit RGB buffers here; tensors are made by the caller from
//! [`Batch::images`].

pub mod augment;
pub mod dataset;
pub mod hsv;
pub mod loader;
pub mod masks;
pub mod segments;
pub mod warp;
pub mod synthetic;

pub use augment::{AugConfig, Sample};
pub use dataset::{DataConfig, Dataset, Item, Label, ScanStats};
pub use loader::{Batch, BatchIter, TrainLoader, ValLoader};
