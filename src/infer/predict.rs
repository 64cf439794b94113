//! Prediction on images: letterbox, forward, NMS (or the end-to-end top-k), map back.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::pixels::letterbox::{letterbox, to_chw, Placement};
use super::nms::{Detection, NmsConfig};
use crate::model::DetectionModel;

/// A letterboxed batch of one image, as the network expects.
pub fn preprocess(img: &RgbImage, imgsz: usize, stride: usize, device: &Device) -> (Tensor<4>, Placement) {
    let (boxed, place) = letterbox(img, (imgsz as u32, imgsz as u32), true, true, stride as u32);
    let (w, h) = boxed.dimensions();
    let x = Tensor::from_data(TensorData::new(to_chw(&boxed), [1, 3, h as usize, w as usize]), device);
    (x, place)
}

/// Detections on one image, in original-image pixels.
pub fn predict_image(model: &DetectionModel, img: &RgbImage, imgsz: usize, cfg: &NmsConfig, device: &Device) -> Vec<Detection> {
    let (x, place) = preprocess(img, imgsz, model.max_stride().max(32), device);
    let found = model.detect(x, cfg).pop().unwrap_or_default();
    found
        .into_iter()
        .map(|d| Detection { xyxy: place.to_original(d.xyxy), ..d })
        .collect()
}
