//! Detection-loss parity with Ultralytics on the yolov8n loss fixture, and a
//! finite-difference check of the loss gradient w.r.t. the head outputs.

mod common;

use burn::tensor::{Distribution, Tensor, TensorData};
use yolodistill::loss::segment::{mask_loss, InstanceMasks};
use yolodistill::loss::{assign_targets, detection_loss, e2e_one2many_weight, loss_from_assigned, LossConfig, Targets};
use yolodistill::loss::Assignment;
use yolodistill::model::layers::head::{HeadMaps, HeadOutput};
use yolodistill::model::layers::mask::MaskMaps;
use yolodistill::task::{InstanceSegmentation, Task};
use yolodistill::weights::st::read_tensors;

const SHAPES: [(usize, usize); 3] = [(40, 40), (20, 20), (10, 10)];

/// The fixture's head maps and targets.
fn fixture(shared: &std::path::Path) -> (HeadMaps, Targets, Vec<(String, yolodistill::weights::HostTensor)>) {
    let (fx, _) = read_tensors(&shared.join("fixtures/yolov8n_loss.safetensors")).unwrap();
    let get = |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).unwrap();
    let device = yolodistill::default_device();
    let boxes = get("preds.boxes");
    let scores = get("preds.scores");
    let maps = HeadMaps {
        boxes: Tensor::from_data(TensorData::new(boxes.data, boxes.shape), &device),
        scores: Tensor::from_data(TensorData::new(scores.data, scores.shape), &device),
    };
    let bi = get("batch_idx");
    let cls = get("cls");
    let bb = get("bboxes");
    let targets = Targets {
        batch_idx: bi.data.iter().map(|&v| v as usize).collect(),
        cls: cls.data.iter().map(|&v| v as usize).collect(),
        bboxes: bb.data.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
        ..Default::default()
    };
    (maps, targets, fx)
}

#[test]
fn yolov8n_loss_items_match_ultralytics() {
    let Some(shared) = common::shared() else { return };
    let (maps, targets, fx) = fixture(&shared);
    let get = |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).unwrap();
    let cfg = LossConfig::new(80, 16, vec![8.0, 16.0, 32.0]);
    let out = detection_loss(&cfg, &maps, &SHAPES, &targets);
    let items = out.host_items();
    let want = get("loss_items").data;
    for (i, name) in ["box", "cls", "dfl"].iter().enumerate() {
        let rel = (items[i] - want[i]).abs() / want[i].abs();
        eprintln!("{name}: ours {} ultralytics {} (rel {rel:.2e})", items[i], want[i]);
        assert!(rel <= 1e-4, "{name}: {} vs {} (rel {rel})", items[i], want[i]);
    }
    let total: f32 = out.total.into_scalar();
    let want_total: f32 = get("loss_total").data.iter().sum();
    assert!((total - want_total).abs() / want_total <= 1e-4);
}

#[test]
fn one_to_one_loss_items_match_ultralytics() {
    // The one-to-one branch of 8.4's E2ELoss assigns with topk 7 / topk2 1. Reference
    // numbers: Ultralytics 8.4.190 v8DetectionLoss(tal_topk=7, tal_topk2=1) on the same
    // fixture maps, printed by scripts/e2e_loss_ref.py.
    let Some(shared) = common::shared() else { return };
    let (maps, targets, _) = fixture(&shared);
    let mut cfg = LossConfig::new(80, 16, vec![8.0, 16.0, 32.0]);
    cfg.assigner.topk = 7;
    cfg.assigner.topk2 = 1;
    let out = detection_loss(&cfg, &maps, &SHAPES, &targets);
    let items = out.host_items();
    let want = [5.5764479637146f32, 6.166893005371094, 4.4639201164245605];
    for (i, name) in ["box", "cls", "dfl"].iter().enumerate() {
        let rel = (items[i] - want[i]).abs() / want[i];
        eprintln!("one2one {name}: ours {} ultralytics {} (rel {rel:.2e})", items[i], want[i]);
        assert!(rel <= 1e-4, "{name}: {} vs {} (rel {rel})", items[i], want[i]);
    }
}

#[test]
fn end_to_end_weights_decay_as_ultralytics() {
    // E2ELoss.decay: o2m 0.8 at the first epoch, 0.1 from the last one on.
    assert!((e2e_one2many_weight(0, 40) - 0.8).abs() < 1e-6);
    assert!((e2e_one2many_weight(39, 40) - 0.1).abs() < 1e-6);
    let mid = e2e_one2many_weight(13, 40);
    assert!((mid - ((1.0 - 13.0 / 39.0) * 0.7 + 0.1)).abs() < 1e-6);
    assert!((e2e_one2many_weight(0, 1) - 0.8).abs() < 1e-6);
}

#[test]
fn loss_gradient_matches_finite_differences() {
    // Tiny head: nc 2, one 4×4 level at stride 8, two boxes in one image.
    let device = yolodistill::default_device().autodiff();
    let shapes = [(4usize, 4usize)];
    let cfg = LossConfig::new(2, 16, vec![8.0]);
    let targets = Targets {
        batch_idx: vec![0, 0],
        cls: vec![0, 1],
        bboxes: vec![[0.35, 0.4, 0.5, 0.45], [0.7, 0.65, 0.3, 0.4]],
        ..Default::default()
    };
    let boxes0 = Tensor::<3>::random([1, 64, 16], Distribution::Normal(0.0, 1.0), &device).inner();
    let scores0 = Tensor::<3>::random([1, 2, 16], Distribution::Normal(-1.0, 1.0), &device).inner();
    // The assignment is a constant for the gradient (as in Ultralytics): fix it once.
    let fixed = assign_targets(&cfg, &HeadMaps { boxes: boxes0.clone(), scores: scores0.clone() }, &shapes, &targets);
    assert!(!fixed.fg_index.is_empty());
    let loss_of = |b: Tensor<3>, s: Tensor<3>| -> f64 {
        let out = loss_from_assigned(&cfg, &HeadMaps { boxes: b, scores: s }, &fixed);
        out.total.into_scalar::<f32>() as f64
    };
    let boxes = boxes0.clone().autodiff().require_grad();
    let scores = scores0.clone().autodiff().require_grad();
    let out = loss_from_assigned(&cfg, &HeadMaps { boxes: boxes.clone(), scores: scores.clone() }, &fixed);
    let grads = out.total.backward();
    let gb = boxes.grad(&grads).unwrap().try_into_vec_as::<f32>().unwrap();
    let gs = scores.grad(&grads).unwrap().try_into_vec_as::<f32>().unwrap();
    let bv = boxes0.clone().try_into_vec_as::<f32>().unwrap();
    let sv = scores0.clone().try_into_vec_as::<f32>().unwrap();
    let plain = yolodistill::default_device();
    let eps = 1e-2f32;
    let mut checked = 0;
    // Central differences on the entries with the largest analytic gradients.
    for (which, vals, grad, shape) in [("boxes", &bv, &gb, [1, 64, 16]), ("scores", &sv, &gs, [1, 2, 16])] {
        let mut order: Vec<usize> = (0..vals.len()).collect();
        order.sort_by(|&i, &j| grad[j].abs().total_cmp(&grad[i].abs()));
        for &k in order.iter().take(6) {
            let f = |delta: f32| {
                let mut v = vals.clone();
                v[k] += delta;
                let t = Tensor::<3>::from_data(TensorData::new(v, shape), &plain);
                if which == "boxes" {
                    loss_of(t, scores0.clone())
                } else {
                    loss_of(boxes0.clone(), t)
                }
            };
            let fd = (f(eps) - f(-eps)) / (2.0 * eps as f64);
            let g = grad[k] as f64;
            assert!((fd - g).abs() <= 2e-2 * g.abs().max(1e-2), "{which}[{k}]: analytic {g} vs numeric {fd}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn device_assignment_matches_ultralytics_and_the_host() {
    // The tensor-op assigner and loss (a GPU's path) on the same fixture: Ultralytics' items
    // within the host's tolerance, and the host's own items within 1e-5.
    let Some(shared) = common::shared() else { return };
    let (maps, targets, fx) = fixture(&shared);
    let want = fx.iter().find(|(n, _)| n == "loss_items").map(|(_, t)| t.data.clone()).unwrap();
    let one2one = [5.5764479637146f32, 6.166893005371094, 4.4639201164245605];
    for (topk, topk2, want) in [(10, 10, &want[..]), (7, 1, &one2one[..])] {
        let mut cfg = LossConfig::new(80, 16, vec![8.0, 16.0, 32.0]);
        (cfg.assigner.topk, cfg.assigner.topk2) = (topk, topk2);
        let host = detection_loss(&cfg, &maps, &SHAPES, &targets).host_items();
        cfg.on_device = true;
        let dev = detection_loss(&cfg, &maps, &SHAPES, &targets).host_items();
        for i in 0..3 {
            let (to_ref, to_host) = ((dev[i] - want[i]).abs() / want[i].abs(), (dev[i] - host[i]).abs() / host[i].abs());
            eprintln!("topk {topk}/{topk2} item {i}: device {} host {} ultralytics {} (rel {to_ref:.2e}, {to_host:.2e})", dev[i], host[i], want[i]);
            assert!(to_ref <= 1e-4 && to_host <= 1e-5, "item {i}: device {} host {} ultralytics {}", dev[i], host[i], want[i]);
        }
    }
}

/// An uncertain pseudo-label (Efficient Teacher's split): the class targets of its anchors are
/// its score times their alignment score, and it has no box or DFL term. Checked against a host
/// computation: the certain assignment edited by hand, and the class BCE summed on the host.
#[test]
fn uncertain_boxes_scale_class_targets_and_drop_box_terms() {
    let device = yolodistill::default_device();
    let shapes = [(4usize, 4usize)];
    let cfg = LossConfig::new(2, 16, vec![8.0]);
    let certain = Targets {
        batch_idx: vec![0, 0],
        cls: vec![0, 1],
        bboxes: vec![[0.35, 0.4, 0.5, 0.45], [0.7, 0.65, 0.3, 0.4]],
        ..Default::default()
    };
    let score = 0.4f32;
    let uncertain = Targets { soft: vec![None, Some(score)], ..certain.clone() };
    assert!(uncertain.has_soft() && !certain.has_soft());
    // fixed head maps (the backend's generator is shared with the other tests of this file)
    let pattern = |n: usize, k: usize, shift: f32| (0..n).map(|i| ((i * k) % 200) as f32 / 100.0 - shift).collect::<Vec<f32>>();
    let boxes = Tensor::<3>::from_data(TensorData::new(pattern(64 * 16, 7919, 1.0), [1, 64, 16]), &device);
    let scores = Tensor::<3>::from_data(TensorData::new(pattern(2 * 16, 104_729, 2.0), [1, 2, 16]), &device);
    let maps = HeadMaps { boxes, scores: scores.clone() };
    let got = assign_targets(&cfg, &maps, &shapes, &uncertain);

    // by hand: box 1's anchors (class 1) get score × their target and weight 0 on box terms
    let mut want = assign_targets(&cfg, &maps, &shapes, &certain);
    assert!(want.fg_class.contains(&0) && want.fg_class.contains(&1), "both boxes have anchors: {:?}", want.fg_class);
    let a_n = 16;
    for (k, (&flat, &c)) in want.fg_index.iter().zip(&want.fg_class).enumerate() {
        if c == 1 {
            want.target_scores[c * a_n + flat as usize] *= score;
            want.fg_weight[k] = 0.0;
        }
    }
    want.tss = want.target_scores.iter().sum::<f32>().max(1.0);
    assert_eq!(got.target_scores, want.target_scores);
    assert_eq!(got.fg_weight, want.fg_weight);
    assert_eq!(got.tss, want.tss);

    // the loss: class BCE on the host over the edited targets; box terms from box 0 alone
    let out = loss_from_assigned(&cfg, &maps, &got).host_items();
    let x = scores.try_into_vec_as::<f32>().unwrap();
    let bce: f64 = x.iter().zip(&want.target_scores).map(|(&x, &t)| (x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()) as f64).sum();
    let cls = bce / want.tss as f64 * cfg.gains.cls as f64;
    assert!((out[1] as f64 - cls).abs() <= 1e-5 * cls, "cls {} vs host {cls}", out[1]);
    let mut box0 = want.clone();
    let keep: Vec<usize> = (0..box0.fg_index.len()).filter(|&k| box0.fg_class[k] == 0).collect();
    box0.fg_index = keep.iter().map(|&k| want.fg_index[k]).collect();
    box0.fg_target = keep.iter().flat_map(|&k| want.fg_target[4 * k..4 * k + 4].to_vec()).collect();
    box0.fg_anchor = keep.iter().flat_map(|&k| want.fg_anchor[2 * k..2 * k + 2].to_vec()).collect();
    box0.fg_stride = keep.iter().map(|&k| want.fg_stride[k]).collect();
    box0.fg_weight = keep.iter().map(|&k| want.fg_weight[k]).collect();
    box0.fg_class = keep.iter().map(|&k| want.fg_class[k]).collect();
    let only0 = loss_from_assigned(&cfg, &maps, &box0).host_items();
    assert!(out[0] > 0.0 && out[2] > 0.0);
    assert!((out[0] - only0[0]).abs() <= 1e-6 * only0[0] && (out[2] - only0[2]).abs() <= 1e-6 * only0[2], "{out:?} vs {only0:?}");

    // joined targets keep each box's certainty
    let joined = certain.clone().joined(Targets { batch_idx: vec![1], cls: vec![0], bboxes: vec![[0.5; 4]], soft: vec![Some(0.3)] });
    assert_eq!(joined.soft, [None, None, Some(0.3)]);
    assert!(certain.clone().joined(certain.clone()).soft.is_empty(), "certain boxes stay without soft scores");
}

/// A segmentation-loss fixture of `tests/data/seg` (scripts/seg_loss_reference.py and
/// seg26_loss_reference.py): its tensors, targets and overlap-form masks.
struct SegFixture(Vec<(String, yolodistill::weights::HostTensor)>);

impl SegFixture {
    fn load(name: &str) -> Self {
        Self(read_tensors(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg").join(name)).unwrap().0)
    }

    fn get(&self, k: &str) -> yolodistill::weights::HostTensor {
        self.0.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).unwrap_or_else(|| panic!("no {k}"))
    }

    fn t3(&self, k: &str) -> Tensor<3> {
        let t = self.get(k);
        Tensor::from_data(TensorData::new(t.data, [t.shape[0], t.shape[1], t.shape[2]]), &yolodistill::default_device())
    }

    fn t4(&self, k: &str) -> Tensor<4> {
        let t = self.get(k);
        Tensor::from_data(TensorData::new(t.data, [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]), &yolodistill::default_device())
    }

    fn targets(&self) -> Targets {
        Targets {
            batch_idx: self.get("batch_idx").data.iter().map(|&v| v as usize).collect(),
            cls: self.get("cls").data.iter().map(|&v| v as usize).collect(),
            bboxes: self.get("bboxes").data.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
            ..Default::default()
        }
    }

    fn masks(&self) -> InstanceMasks {
        let m = self.get("masks");
        InstanceMasks { size: (m.shape[1], m.shape[2]), ids: m.data.iter().map(|&v| v as u16).collect() }
    }
}

/// Ultralytics' segmentation loss (v8SegmentationLoss) on `scripts/seg_loss_reference.py`'s batch:
/// two images, five boxes with overlap-form instance masks, random head maps and prototypes,
/// through the segmentation task's loss as a training step runs it (box, seg, cls, dfl).
#[test]
fn segmentation_loss_items_match_ultralytics() {
    let fx = SegFixture::load("seg_loss_ref.safetensors");
    let (get, t3) = (|k: &str| fx.get(k), |k: &str| fx.t3(k));
    let maps = HeadMaps { boxes: t3("boxes"), scores: t3("scores") };
    let protos = fx.t4("protos");
    let (targets, masks) = (fx.targets(), fx.masks());
    let mut cfg = LossConfig::new(3, 16, vec![8.0, 16.0, 32.0]);
    cfg.on_device = true; // the task assigns on the host all the same: the mask term needs each anchor's object
    let shapes = vec![(16, 16), (8, 8), (4, 4)];
    let mask_maps = MaskMaps { coeffs: t3("mask_coefficient"), coeffs_one2one: None, protos: protos.clone(), semantic: None };
    let head = HeadOutput { one2many: maps.clone(), one2one: None, shapes: shapes.clone(), masks: Some(mask_maps) };
    let (out, asg) = InstanceSegmentation.loss(&cfg, &head, &targets, Some(&masks), 0, 1);
    let Assignment::Host(asg) = asg else { panic!("a segmentation loss assigns on the host") };
    assert!(asg.fg_gt.contains(&2), "the third object of the second image has anchors: {:?}", asg.fg_gt);
    assert_eq!(InstanceSegmentation.loss_names(), ["box_loss", "seg_loss", "cls_loss", "dfl_loss", "sem_loss"]);
    let ours = out.items.clone().try_into_vec_as::<f32>().unwrap();
    let total = out.total.into_scalar::<f32>();
    let want = get("items").data;
    assert!((total - 2.0 * ours.iter().sum::<f32>()).abs() < 1e-4 * total, "the total is the items' sum times the batch size: {total}");
    for (i, name) in ["box", "seg", "cls", "dfl"].iter().enumerate() {
        let rel = (ours[i] - want[i]).abs() / want[i];
        eprintln!("{name}: ours {} ultralytics {} (rel {rel:.2e})", ours[i], want[i]);
        assert!(rel < 1e-5, "{name}: ours {} vs Ultralytics {}", ours[i], want[i]);
    }
    // YOLO26's semantic term: 0 for a Segment head, as Ultralytics logs it (the fixture predates it)
    assert_eq!(ours[4], 0.0);
    assert!(want.len() == 4 || want[4] == 0.0);
    // a mask map of another size is refused, naming mask_ratio
    let small = InstanceMasks { size: (8, 8), ids: vec![0; 2 * 64] };
    let e = mask_loss(&t3("mask_coefficient"), &protos, &asg, &small).unwrap_err().to_string();
    assert!(e.contains("mask_ratio"), "{e}");
}

/// YOLO26's semantic term (before its gain) against Ultralytics 8.4.190's BCEDiceLoss on the
/// one-hot class map it builds from overlap-form instance ids (`tests/data/seg/sem_loss_ref.json`,
/// scripts/sem_loss_reference.py): logits at an eighth of the input, ids at a quarter, so the
/// target is nearest-downsampled; one image has a class no object has.
#[test]
fn semantic_loss_matches_ultralytics() {
    use yolodistill::loss::segment::{object_classes, semantic_loss};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/sem_loss_ref.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dims = |k: &str| -> Vec<usize> { r[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect() };
    let (ls, is) = (dims("logits_shape"), dims("ids_shape"));
    let logits: Vec<f32> = r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let ids: Vec<u16> = r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u16).collect();
    let classes: Vec<Vec<usize>> = r["classes"].as_array().unwrap().iter().map(|c| c.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()).collect();
    // the classes as targets list them: image by image, in the masks' object order
    let (mut batch_idx, mut cls) = (Vec::new(), Vec::new());
    for (i, c) in classes.iter().enumerate() {
        batch_idx.extend(std::iter::repeat_n(i, c.len()));
        cls.extend(c);
    }
    assert_eq!(object_classes(&batch_idx, &cls, ls[0]), classes);
    let device = yolodistill::default_device();
    let t = Tensor::<4>::from_data(TensorData::new(logits, [ls[0], ls[1], ls[2], ls[3]]), &device);
    let gt = InstanceMasks { size: (is[1], is[2]), ids };
    let got = semantic_loss(&t, &gt, &classes).unwrap().into_scalar::<f32>();
    let want = r["sem_loss"].as_f64().unwrap() as f32;
    eprintln!("semantic loss: ours {got} Ultralytics {want}");
    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    let wrong = InstanceMasks { size: (is[1], is[2]), ids: vec![0; is[1] * is[2]] };
    assert!(semantic_loss(&t, &wrong, &classes).is_err(), "masks of one image for two");
}

/// YOLO26's segmentation loss (`tests/data/seg/seg26_loss_ref.safetensors`,
/// scripts/seg26_loss_reference.py): Ultralytics 8.4.190's end-to-end loss around SegmentLoss26 at
/// the first epoch, two branches assigned mask-aware (each candidate's overlap the mean of its box
/// and mask IoU), with the semantic term; the one-to-one items (box, seg, cls, l1, sem) and the
/// total of both branches.
#[test]
fn yolo26_segmentation_loss_matches_ultralytics() {
    let fx = SegFixture::load("seg26_loss_ref.safetensors");
    let (get, t3, t4) = (|k: &str| fx.get(k), |k: &str| fx.t3(k), |k: &str| fx.t4(k));
    let (targets, masks) = (fx.targets(), fx.masks());
    let cfg = LossConfig::new(3, 1, vec![8.0, 16.0, 32.0]);
    let shapes = vec![(16, 16), (8, 8), (4, 4)];
    let mask_maps = MaskMaps { coeffs: t3("o2m.mask_coefficient"), coeffs_one2one: Some(t3("o2o.mask_coefficient")), protos: t4("protos"), semantic: Some(t4("semantic")) };
    let head = HeadOutput {
        one2many: HeadMaps { boxes: t3("o2m.boxes"), scores: t3("o2m.scores") },
        one2one: Some(HeadMaps { boxes: t3("o2o.boxes"), scores: t3("o2o.scores") }),
        shapes,
        masks: Some(mask_maps),
    };
    let (out, _) = InstanceSegmentation.loss(&cfg, &head, &targets, Some(&masks), 0, 10);
    let ours = out.items.try_into_vec_as::<f32>().unwrap();
    let want = get("items").data;
    for (i, name) in ["box", "seg", "cls", "l1", "sem"].iter().enumerate() {
        let rel = (ours[i] - want[i]).abs() / want[i];
        eprintln!("{name}: ours {} ultralytics {} (rel {rel:.2e})", ours[i], want[i]);
        assert!(rel < 1e-5, "{name}: ours {} vs Ultralytics {}", ours[i], want[i]);
    }
    let (total, want_total) = (out.total.into_scalar::<f32>(), get("total").data[0]);
    eprintln!("total: ours {total} ultralytics {want_total}");
    assert!((total - want_total).abs() <= 1e-5 * want_total, "total: ours {total} vs Ultralytics {want_total}");
}
