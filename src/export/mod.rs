//! Export of trained models: ONNX (hand-written protobuf) and fused safetensors.

pub mod onnx;
pub mod onnx_proto;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use crate::model::{save_safetensors, DetectionModel};

/// Saves the model with its BatchNorms folded into the convolutions
/// (loads back as a fused, inference-only model).
pub fn export_safetensors_fused(model: &DetectionModel, path: &Path) -> Result<()> {
    let mut m = model.clone();
    if !m.fused {
        m.fuse();
    }
    save_safetensors(&m, path, HashMap::new())
}
