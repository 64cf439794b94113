//! Prediction on images: letterbox, forward, NMS (or the end-to-end top-k), masks, map back.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::nms::{Detection, NmsConfig};
use super::segment::{input_masks, polygon, InstanceMask, MaskInputs};
use crate::model::DetectionModel;
use crate::pixels::letterbox::{letterbox, to_chw, Placement};

/// A letterboxed batch of one image, as the network expects.
pub fn preprocess(img: &RgbImage, imgsz: usize, stride: usize, device: &Device) -> (Tensor<4>, Placement) {
    let (boxed, place) = letterbox(img, (imgsz as u32, imgsz as u32), true, true, stride as u32);
    let (w, h) = boxed.dimensions();
    let x = Tensor::from_data(TensorData::new(to_chw(&boxed), [1, 3, h as usize, w as usize]), device);
    (x, place)
}

/// What a model finds on one image.
pub struct Prediction {
    /// Detections in original-image pixels.
    pub dets: Vec<Detection>,
    /// A segmentation model's mask of each detection, at the input's resolution (empty for
    /// other models).
    pub masks: Vec<InstanceMask>,
    /// Where the image sits in the input.
    pub place: Placement,
    /// The input's (w, h).
    pub input: (usize, usize),
}

impl Prediction {
    /// Each mask's outline in original-image pixels (as Ultralytics' `masks.xy`).
    pub fn polygons(&self) -> Vec<Vec<[f32; 2]>> {
        self.masks.iter().map(|m| polygon(m, self.input, self.place.orig)).collect()
    }
}

/// Detections (and a segmentation model's masks) on one image. As Ultralytics' predictor, a
/// detection whose mask is empty is dropped.
pub fn predict_image(model: &DetectionModel, img: &RgbImage, imgsz: usize, cfg: &NmsConfig, device: &Device) -> Prediction {
    let (x, place) = preprocess(img, imgsz, model.max_stride().max(32), device);
    let [_, _, h, w] = x.dims();
    let (mut found, maps) = model.detect_with_masks(x, cfg);
    let mut dets = found.pop().unwrap_or_default();
    let mut masks = Vec::new();
    if let Some((coeffs, protos)) = maps {
        let [_, nm, _] = coeffs.dims();
        let [_, _, mh, mw] = protos.dims();
        let coeffs = crate::device::read_back(coeffs);
        let protos = crate::device::read_back(protos);
        let inputs = MaskInputs { coeffs: &coeffs, protos: &protos, nm, size: (mh, mw), ratio: w as f32 / mw as f32 };
        let all = input_masks(&inputs, (w, h), &dets);
        (dets, masks) = dets.into_iter().zip(all).filter(|(_, m)| m.bits.iter().any(|&b| b)).unzip();
    }
    let dets = dets.into_iter().map(|d| Detection { xyxy: place.to_original(d.xyxy), ..d }).collect();
    Prediction { dets, masks, place, input: (w, h) }
}
