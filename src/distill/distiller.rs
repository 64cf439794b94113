//! The distiller: a frozen teacher, paired feature taps with adapters, and the
//! chosen feature/response losses, plugged into the trainer as a [`StepHook`].

use anyhow::{bail, Context, Result};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};

pub use super::args::Response;
use super::args::{flag_value, DistillArgs};
use super::crosskd::CrossHead;
use super::losses::{bckd, crosskd, dense_box_term, dense_response, kd_binary, kd_mixed, localisation_kl, logit_mse, schedule_weight, Adapter, MgdGenerator, Projector};
pub use super::methods::{parse_methods, Feature};
use super::methods::{FeatureMethod, LevelMaps, StepKey};
use super::pseudo::{detections_as_targets, MeanTeacher, PseudoCounts};
use crate::loss::segment::mask_distillation;
use crate::loss::{model_loss, Assignment, LossConfig, Targets};
use crate::model::walk::{child, drawn_to, Visit, Walk};
use crate::model::layers::head::{anchor_tensors, HeadMaps, HeadOutput};
use crate::model::{self, DetectionModel};
use crate::train::optim::Trainable;
use crate::train::{HookInput, HookLoss, StepHook, StepPos};

fn parse_layers(s: &str) -> Result<Vec<usize>> {
    s.split(',').map(|x| x.trim().parse::<usize>().with_context(|| format!("bad layer index '{x}'"))).collect()
}

/// One student/teacher tap pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub student_layer: usize,
    pub teacher_layer: usize,
    /// [C, H, W] at the planning image size.
    pub student_shape: [usize; 3],
    pub teacher_shape: [usize; 3],
    /// The student map is resized to the teacher's spatial size.
    pub resize: bool,
}

/// Pairs taps and measures their shapes with one dry forward at `imgsz`.
pub fn plan_pairs(student: &DetectionModel, teacher: &DetectionModel, args: &DistillArgs, imgsz: usize) -> Result<Vec<Pair>> {
    let s_layers = if args.distill_layers == "auto" { student.spec.detect_from() } else { parse_layers(&args.distill_layers)? };
    let t_layers = match &args.teacher_layers {
        Some(t) => parse_layers(t)?,
        None if args.distill_layers == "auto" => teacher.spec.detect_from(),
        // same levels of the teacher's graph: the k-th student tap ↔ the k-th teacher Detect input
        None => {
            let t_from = teacher.spec.detect_from();
            if s_layers.len() != t_from.len() {
                bail!("--teacher-layers is needed: {} student taps but the teacher head has {} levels", s_layers.len(), t_from.len());
            }
            t_from
        }
    };
    if s_layers.len() != t_layers.len() {
        bail!("{} student layers but {} teacher layers", s_layers.len(), t_layers.len());
    }
    for (&l, who, m) in s_layers.iter().map(|l| (l, "student", student)).chain(t_layers.iter().map(|l| (l, "teacher", teacher))) {
        if l + 1 >= m.layers.len() {
            bail!("{who} layer {l} is not a feature layer (the model has layers 0..{} before its head)", m.layers.len() - 1);
        }
    }
    let device = crate::default_device();
    let x = Tensor::<4>::zeros([1, 3, imgsz, imgsz], &device);
    let shape3 = |t: &Tensor<4>| {
        let d = t.dims();
        [d[1], d[2], d[3]]
    };
    let s_out = student.forward_taps(x.clone(), &s_layers, false).taps;
    let t_out = teacher.forward_taps(x, &t_layers, false).taps;
    Ok(s_layers
        .iter()
        .zip(&t_layers)
        .zip(s_out.iter().zip(&t_out))
        .map(|((&sl, &tl), (so, to))| {
            let (ss, ts) = (shape3(so), shape3(to));
            Pair { student_layer: sl, teacher_layer: tl, student_shape: ss, teacher_shape: ts, resize: ss[1..] != ts[1..] }
        })
        .collect())
}

/// A feature method of the run and its written weight.
pub struct Method {
    pub feature: Feature,
    pub weight: f32,
    pub imp: Box<dyn FeatureMethod>,
}

pub struct Distiller {
    pub teacher: DetectionModel,
    pub pairs: Vec<Pair>,
    /// The feature methods with their written weights, in the order given.
    pub methods: Vec<Method>,
    pub args: DistillArgs,
    /// One adapter per pair whose channels differ (for the methods that need it).
    pub adapters: Vec<Option<Adapter>>,
    /// Last epoch (0-based, exclusive bound) with distillation.
    pub stop_epoch: usize,
    /// Online mode: the teacher's own loss settings (copied from the student's).
    pub teacher_loss: Option<LossConfig>,
    /// MGD masks are a function of this seed and the step (see [`random_keep_mask`]), so a
    /// resumed run masks as the uninterrupted one would have (`train` sets `--seed`).
    pub mask_seed: u64,
    /// Σ|term| over the epoch's steps so far, on the device (a warning when an epoch's is 0).
    term_mass: Option<Tensor<1>>,
    /// Names of the logged terms, reported as 0 once distillation has stopped.
    logged: Vec<String>,
    /// Calibrated multipliers by term name (`--distill-calibrate`), once measured or restored.
    scales: Option<Vec<(String, f32)>>,
    /// Schedule weight of the last step (calibration divides it out).
    last_weight: f32,
    /// The teacher's forward of the current batch when pseudo-labelling ran it first.
    pass: Option<TeacherPass>,
    /// Box channels of the student's head (4 × its reg_max).
    student_box_channels: usize,
    /// Whether the student and the teacher are both segmentation models (the mask response).
    both_segment: bool,
    /// CrossKD's cross head (`--logit crosskd`).
    cross: Option<CrossHead>,
    /// The mean teacher (`--mean-teacher`): it, not the teacher, pseudo-labels.
    mean_teacher: Option<MeanTeacher>,
    /// The teacher's pseudo-labels per unlabeled image, once it has made some.
    pseudo_counts: Option<PseudoCounts>,
}

/// The teacher's pass over a batch: its tapped layers, and its head's maps when a term reads
/// them (feature-only distillation stops after the last tapped layer).
pub struct TeacherPass {
    pub taps: Vec<Tensor<4>>,
    pub head: Option<HeadOutput>,
}

impl TeacherPass {
    fn head(&self) -> &HeadOutput {
        self.head.as_ref().expect("the teacher's head runs whenever a term reads it (Distiller::needs_teacher_head)")
    }
}

/// A teacher tensor as a constant for the distillation terms: offline teachers
/// run on the plain device, online ones are detached (the teacher learns from
/// its own detection loss only, as in the seed).
fn constant<const D: usize>(t: &Tensor<D>, online: bool) -> Tensor<D> {
    if online {
        t.clone().detach()
    } else {
        Tensor::from_inner(t.clone())
    }
}

pub(super) fn resize_to(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let d = x.dims();
    if d[2] == h && d[3] == w {
        return x;
    }
    interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h, w]))
}

/// Per-level slices [B, C, H, W] of flattened head maps [B, C, A].
fn level_maps(flat: &Tensor<3>, shapes: &[(usize, usize)]) -> Vec<Tensor<4>> {
    let [b, c, _] = flat.dims();
    let mut start = 0;
    shapes
        .iter()
        .map(|&(h, w)| {
            let m = flat.clone().narrow(2, start, h * w).reshape([b, c, h, w]);
            start += h * w;
            m
        })
        .collect()
}

impl Distiller {
    pub fn new(args: &DistillArgs, student: &DetectionModel, imgsz: usize, epochs: usize, close_mosaic: usize, device: &Device) -> Result<Self> {
        let path = args.teacher.as_deref().context("no --teacher")?;
        // A YAML teacher (random init, e.g. for pairing checks) gets the student's class count.
        let is_yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        // built where the student was (random init of a YAML teacher included), then moved
        let host = crate::device::init_device(device);
        let mut teacher = drawn_to(model::load(path, is_yaml.then(|| student.nc()), &host)?.model, device);
        let both_segment = student.head().mask.is_some() && teacher.head().mask.is_some();
        if !args.online {
            // A frozen teacher runs in eval mode: BatchNorm folded into its convolutions computes
            // the same maps in one pass instead of two.
            teacher.fuse();
        }
        if student.head().mask.is_none() {
            // no term of a detection student reads a segmentation teacher's masks
            teacher.drop_masks();
        }
        if teacher.nc() != student.nc() {
            bail!("the teacher {path} has {} classes but the student has {}: they must agree", teacher.nc(), student.nc());
        }
        let methods = parse_methods(&args.distill, args.distill_weight)?;
        if args.logit == Response::Ld && (student.head().reg_max == 1 || teacher.head().reg_max != student.head().reg_max) {
            bail!("--logit ld needs DFL heads with the same reg_max on both sides");
        }
        let pairs = plan_pairs(student, &teacher, args, imgsz)?;
        let cross = match args.logit {
            Response::Crosskd if args.online => bail!("--logit crosskd runs the student's head features through a frozen teacher's head: not with --online"),
            Response::Crosskd if args.distill_layers != "auto" => {
                bail!("--logit crosskd reads the student's Detect inputs: it needs --distill-layers auto")
            }
            Response::Crosskd => Some(CrossHead::new(student, &teacher, device)?),
            _ => None,
        };
        let need_adapter = methods.iter().any(|(m, _)| m.needs_adapter());
        let adapters = pairs
            .iter()
            .map(|p| (need_adapter && p.student_shape[0] != p.teacher_shape[0]).then(|| drawn_to(Adapter::new(p.student_shape[0], p.teacher_shape[0], &host), device)))
            .collect();
        // Modules in a fixed order (adapters, MGD generators, sl2 projectors): a seed gives the
        // same initial weights whatever order the methods are written in.
        let has = |f: Feature| methods.iter().any(|(m, _)| *m == f);
        let mut generators = has(Feature::Mgd).then(|| pairs.iter().map(|p| drawn_to(MgdGenerator::new(p.teacher_shape[0], &host), device)).collect());
        let mut projectors = has(Feature::Sl2).then(|| pairs.iter().map(|p| drawn_to(Projector::new(p.student_shape[0], p.teacher_shape[0], &host), device)).collect());
        let methods = methods
            .into_iter()
            .map(|(feature, weight)| {
                let imp = feature.build(&mut generators, &mut projectors, args.cwd_tau, args.mgd_alpha, args.mgd_lambda);
                Method { feature, weight, imp }
            })
            .collect();
        // Default: distil while mosaic is on (the whole run when mosaic never opens).
        let mosaic_epochs = if epochs > close_mosaic { epochs - close_mosaic } else { epochs };
        let stop_epoch = args.distill_stop_epoch.unwrap_or(mosaic_epochs).min(epochs);
        Ok(Self {
            teacher,
            pairs,
            methods,
            args: args.clone(),
            adapters,
            stop_epoch,
            teacher_loss: None,
            mask_seed: 0,
            term_mass: None,
            logged: Vec::new(),
            scales: Some(args.calibrated.clone()).filter(|s| !s.is_empty()),
            last_weight: 1.0,
            pass: None,
            student_box_channels: 4 * student.head().reg_max,
            both_segment,
            cross,
            mean_teacher: args.mean_teacher(epochs),
            pseudo_counts: None,
        })
    }

    /// Trainable parameters of the distiller (adapters, generators, projectors).
    pub fn param_count(&mut self) -> usize {
        let mut n = 0;
        self.walk_params(&mut |_, s| {
            if s.is_param() {
                n += s.shape().iter().product::<usize>();
            }
        });
        n
    }

    /// The pairing report printed by `distill-plan` and at the start of training.
    pub fn report(&mut self, imgsz: usize) -> String {
        let mode = if self.args.online { "online (trained jointly with its own detection loss)" } else { "offline (frozen, eval mode)" };
        let mut s = format!("teacher: {mode}\ndistillation pairs (student layer → teacher layer):\n");
        for (i, p) in self.pairs.iter().enumerate() {
            let adapter = match &self.adapters[i] {
                Some(_) => format!("adapter 1×1 {}→{}", p.student_shape[0], p.teacher_shape[0]),
                None => "no adapter".into(),
            };
            s.push_str(&format!(
                "  level {i}: {:>3} {:?} → {:>3} {:?}  {adapter}{}\n",
                p.student_layer,
                p.student_shape,
                p.teacher_layer,
                p.teacher_shape,
                if p.resize { ", student map resized to the teacher's size" } else { "" }
            ));
        }
        let methods: Vec<String> = self.methods.iter().map(|m| format!("{}:{}", m.feature.name(), m.weight)).collect();
        s.push_str(&format!(
            "methods: {} | response: {}{} | schedule: {} until epoch {}\n",
            if methods.is_empty() { "none".into() } else { methods.join(",") },
            flag_value(&self.args.logit),
            self.response_note(),
            flag_value(&self.args.distill_schedule),
            self.stop_epoch
        ));
        if let Some(m) = &self.mean_teacher {
            s.push_str(&format!("{}\n", m.describe()));
        }
        s.push_str(&format!(
            "distiller parameters: {} | teacher extra cost: {:.2} GFLOPs per image at {imgsz}\n",
            self.param_count(),
            crate::model::flops::gflops(&self.teacher, imgsz)
        ));
        s
    }

    /// What a response method does when the two heads differ (said by `distill-plan` and at the
    /// start of training).
    fn response_note(&self) -> String {
        let masks = if self.both_segment && self.args.logit != Response::None {
            " (and l_mask: the student's masks against the teacher's at its foreground anchors)"
        } else {
            ""
        };
        self.head_note() + masks
    }

    fn head_note(&self) -> String {
        let (s, t) = (self.student_box_channels, self.teacher.head().reg_max * 4);
        match self.args.logit {
            Response::Dense if !dense_box_term(s, t, self.teacher.head().reg_max) => format!(
                " (class term only: its box term compares DFL distributions, and the student's head has {s} box channels, the teacher's {t})"
            ),
            Response::Mse if s != t => format!(" (skipped at every step: the heads' box maps differ, {s} and {t} channels)"),
            Response::Crosskd => match &self.cross {
                Some(c) => format!(" (the student's head features through the teacher head's later layers; adapters per level: {})", c.describe()),
                None => String::new(),
            },
            _ => String::new(),
        }
    }

    /// Whether a term reads the teacher's head: the online teacher's own loss, pseudo-labels,
    /// a response (logit) term, or a feature method weighted by the teacher's class scores.
    fn needs_teacher_head(&self) -> bool {
        self.args.online
            || (self.args.pseudo_conf.is_some() && self.mean_teacher.is_none())
            || self.args.logit != Response::None
            || self.methods.iter().any(|m| m.imp.needs_teacher_scores())
    }

    /// The teacher's forward of `images` (offline: eval mode, no gradient; online: train mode),
    /// up to its last tapped layer when no term reads its head.
    pub fn teacher_forward(&self, images: &Tensor<4>) -> TeacherPass {
        let t_layers: Vec<usize> = self.pairs.iter().map(|p| p.teacher_layer).collect();
        if !self.needs_teacher_head() {
            return TeacherPass { taps: self.teacher.taps_only(images.clone().inner(), &t_layers), head: None };
        }
        let f = if self.args.online {
            let e2e = self.teacher.head().has_one2one();
            self.teacher.forward_taps(images.clone(), &t_layers, e2e)
        } else {
            self.teacher.forward_taps(images.clone().inner(), &t_layers, false)
        };
        TeacherPass { taps: f.taps, head: Some(f.head) }
    }

    /// While calibration is asked for and not done: the asked fraction of the detection gradient.
    pub fn calibration_pending(&self) -> Option<f32> {
        self.args.distill_calibrate.filter(|_| self.scales.is_none())
    }

    /// Sets the term weights from the gradient norms measured on one batch (detection loss, then
    /// each term as currently weighted); returns the multipliers.
    pub fn calibrate(&mut self, det_norm: f32, term_norms: &[(String, f32)]) -> Vec<(String, f32)> {
        let Some(fraction) = self.args.distill_calibrate else { return Vec::new() };
        let scales: Vec<_> = term_norms
            .iter()
            .map(|(name, norm)| {
                // The term's written weight (a method's `:w`, or --logit-weight) stays a factor.
                let written = match name.strip_prefix("d_") {
                    Some(m) => self.methods.iter().find(|f| f.feature.name() == m).map(|f| f.weight),
                    None if name.starts_with("l_") => Some(self.args.logit_weight),
                    None => None, // the online teacher's own loss: not a distillation term
                };
                let scale = match written {
                    Some(mw) if *norm > 0.0 && mw != 0.0 && self.last_weight > 0.0 => {
                        // norm = mw · w · raw; aim: scale · mw · raw = fraction · mw · det.
                        fraction * det_norm * mw * self.last_weight / norm
                    }
                    _ => 1.0,
                };
                (name.clone(), scale)
            })
            .collect();
        self.scales = Some(scales.clone());
        scales
    }

    /// An online teacher learns from the labels too: its own detection loss, over the labeled
    /// images only.
    fn online_teacher_loss(&mut self, ctx: &HookInput<'_>, t_fwd: &TeacherPass, out: &mut HookLoss) {
        let cfg = self.teacher_loss.get_or_insert_with(|| {
            let h = self.teacher.head();
            let mut c = LossConfig::new(h.nc, h.reg_max, h.strides.clone());
            c.gains = ctx.loss_cfg.gains;
            c
        });
        // The online teacher learns from the labels only: its loss covers the labeled images.
        let b = ctx.images.dims()[0];
        let head = if ctx.labeled < b { t_fwd.head().first_images(ctx.labeled) } else { t_fwd.head().clone() };
        let (tl, _) = model_loss(cfg, &head, ctx.targets, ctx.pos.epoch, ctx.pos.epochs);
        for (i, n) in ["t_box", "t_cls", "t_dfl"].into_iter().enumerate() {
            out.log(n, tl.items.clone().narrow(0, i, 1));
        }
        out.terms.push(("t_det".into(), tl.total / b as f32));
    }

    /// The feature methods' terms: one value per paired level, summed (mimic, cwd, mgd, sl2) or
    /// averaged (at, gram, relation) as the spec says, with the per-level values logged.
    fn feature_terms(&self, ctx: &HookInput<'_>, t_fwd: &TeacherPass, teacher_maps: &[Tensor<4>], t_head: Option<&HeadMaps>, w: f32, out: &mut HookLoss) {
        let student_maps: Vec<Tensor<4>> = ctx
            .taps
            .iter()
            .zip(teacher_maps)
            .map(|(s, t)| {
                let d = t.dims();
                resize_to(s.clone(), d[2], d[3])
            })
            .collect();
        let adapted: Vec<Tensor<4>> =
            student_maps.iter().zip(&self.adapters).map(|(s, a)| a.as_ref().map(|a| a.forward(s.clone())).unwrap_or_else(|| s.clone())).collect();
        let levels = student_maps.len();
        let t_scores = match t_head.filter(|_| self.methods.iter().any(|m| m.imp.needs_teacher_scores())) {
            Some(h) => level_maps(&h.scores, &t_fwd.head().shapes),
            None => Vec::new(),
        };
        let maps = LevelMaps { student: &student_maps, adapted: &adapted, adapters: &self.adapters, teacher: teacher_maps, teacher_scores: &t_scores };
        let step = StepKey { seed: self.mask_seed, epoch: ctx.pos.epoch, batch: ctx.pos.batch };
        for m in &self.methods {
            let per_level: Vec<Tensor<1>> = (0..levels).map(|l| m.imp.level_loss(l, &maps, step)).collect();
            let scale = m.weight * w / if m.imp.averaged() { levels as f32 } else { 1.0 };
            let name = m.feature.name();
            for (l, v) in per_level.iter().enumerate() {
                out.log(format!("d_{name}.l{l}"), v.clone() * scale);
            }
            let term = per_level.into_iter().reduce(|x, y| x + y).expect("levels") * scale;
            out.terms.push((format!("d_{name}"), term));
        }
    }

    /// The response (logit) term, weighted by --logit-weight and the schedule.
    fn response_term(&self, ctx: &HookInput<'_>, t_fwd: &TeacherPass, t_head: Option<&HeadMaps>, w: f32, out: &mut HookLoss) {
        // no head maps: no response term (see needs_teacher_head)
        let Some(t_head) = t_head else { return };
        let s_head = &ctx.student.one2many;
        let device = ctx.images.device();
        let resp: Option<(&str, Tensor<1>)> = match self.args.logit {
            Response::None => None,
            Response::Mse => {
                if s_head.scores.dims() != t_head.scores.dims() || s_head.boxes.dims() != t_head.boxes.dims() {
                    None
                } else {
                    let cat = |h: &crate::model::layers::head::HeadMaps| Tensor::cat(vec![h.boxes.clone(), h.scores.clone()], 1);
                    let s = level_maps(&cat(s_head), &ctx.student.shapes);
                    let t = level_maps(&cat(t_head), &t_fwd.head().shapes);
                    Some(("l_mse", logit_mse(&s, &t, 1.0)))
                }
            }
            Response::Kl => Some(("l_kl", kd_binary(s_head.scores.clone(), t_head.scores.clone(), self.args.temperature))),
            Response::Mixed => {
                // Rows: the student's foreground anchors; hard labels: their assigned classes.
                let (fg_index, fg_class) = ctx.assigned.foreground();
                let n = fg_index.len();
                if n == 0 {
                    Some(("l_mixed", s_head.scores.clone().sum() * 0.0))
                } else {
                    let [b, nc, a] = s_head.scores.dims();
                    let idx = Tensor::<1, Int>::from_data(TensorData::new(fg_index, [n]), &device);
                    let rows = |m: &Tensor<3>| -> Tensor<2> { m.clone().swap_dims(1, 2).reshape([b * a, nc]).select(0, idx.clone()) };
                    let (s, t) = (rows(&s_head.scores), rows(&t_head.scores));
                    Some(("l_mixed", kd_mixed(s, t, &fg_class, self.args.soft_alpha, self.args.temperature)))
                }
            }
            Response::Dense => {
                let r = self.teacher.head().reg_max;
                let (cls, boxes) =
                    dense_response(s_head.boxes.clone(), s_head.scores.clone(), t_head.boxes.clone(), t_head.scores.clone(), r, self.args.temperature);
                // On the detection loss's scale: its class and DFL gains.
                let g = ctx.loss_cfg.gains;
                Some(self.class_and_box("l_dense", cls * g.cls, boxes * g.dfl, w, out))
            }
            Response::Bckd => {
                let t_reg_max = self.teacher.head().reg_max;
                let (anchors, _) = anchor_tensors(&ctx.student.shapes, &self.teacher.head().strides, &device);
                let (cls, boxes) = bckd(
                    s_head.boxes.clone(),
                    s_head.scores.clone(),
                    self.student_box_channels / 4,
                    t_head.boxes.clone(),
                    t_head.scores.clone(),
                    t_reg_max,
                    anchors,
                );
                // On the detection loss's scale: its class and box gains.
                let g = ctx.loss_cfg.gains;
                Some(self.class_and_box("l_bckd", cls * g.cls, boxes * g.boxes, w, out))
            }
            Response::Crosskd => {
                let cross = self.cross.as_ref().expect("the distiller makes the cross head for --logit crosskd");
                let c = cross.predictions(ctx.student_head, ctx.taps);
                let head = self.teacher.head();
                let (anchors, _) = anchor_tensors(&ctx.student.shapes, &head.strides, &device);
                let (cls, boxes) = crosskd(c.boxes, c.scores, t_head.boxes.clone(), t_head.scores.clone(), head.reg_max, anchors, self.args.temperature);
                let g = ctx.loss_cfg.gains;
                Some(self.class_and_box("l_crosskd", cls * g.cls, boxes * g.boxes, w, out))
            }
            Response::Ld => {
                let t_scores = burn::tensor::activation::sigmoid(t_head.scores.clone()).max_dim(1);
                let [n, _, a] = t_scores.dims();
                let wts: Tensor<2> = t_scores.reshape([n, a]);
                Some((
                    "l_ld",
                    localisation_kl(s_head.boxes.clone(), t_head.boxes.clone(), self.teacher.head().reg_max, self.args.temperature, wts),
                ))
            }
        };
        if let Some((name, term)) = resp {
            out.terms.push((name.to_string(), term * (self.args.logit_weight * w)));
        } else if self.args.logit == Response::Mse {
            out.log("l_mse_skipped", Tensor::ones([1], &device));
        }
    }

    /// The response on the masks, beside any response term between two segmentation models:
    /// the student's mask at each of its foreground anchors against the teacher's mask
    /// probabilities at the same anchor (`l_mask`, on the mask term's scale: the box gain).
    /// Skipped when the two models' prototypes differ in size (see [`Self::response_note`]).
    fn mask_term(&self, ctx: &HookInput<'_>, t_fwd: &TeacherPass, w: f32, out: &mut HookLoss) {
        if self.args.logit == Response::None {
            return;
        }
        if !self.both_segment {
            return;
        }
        let (Some(s), Some(t), Assignment::Host(asg)) = (&ctx.student.masks, t_fwd.head().masks.as_ref(), ctx.assigned) else { return };
        let online = self.args.online;
        let (tc, tp) = (constant(&t.coeffs, online), constant(&t.protos, online));
        if let Ok(term) = mask_distillation(&s.coeffs, &s.protos, asg, &tc, &tp) {
            out.terms.push(("l_mask".to_string(), term * (ctx.loss_cfg.gains.boxes * self.args.logit_weight * w)));
        }
    }

    /// A response of a class and a box term: both logged as `<name>.cls` / `<name>.box` at the
    /// weight the step gives them; returns the term (their sum).
    fn class_and_box(&self, name: &'static str, cls: Tensor<1>, boxes: Tensor<1>, w: f32, out: &mut HookLoss) -> (&'static str, Tensor<1>) {
        let shown = |t: &Tensor<1>| t.clone() * self.args.logit_weight * w;
        out.log(format!("{name}.cls"), shown(&cls));
        out.log(format!("{name}.box"), shown(&boxes));
        (name, cls + boxes)
    }

    /// Calibrated multipliers apply to a term and to its per-level values.
    fn apply_calibration(&self, out: &mut HookLoss) {
        for (name, scale) in self.scales.iter().flatten() {
            for (n, t) in out.terms.iter_mut() {
                if n == name {
                    *t = t.clone() * *scale;
                }
            }
            let level = format!("{name}.");
            for l in out.logs.iter_mut().filter(|l| l.name.starts_with(&level)) {
                l.factor *= *scale as f64;
            }
        }
    }

    /// Remembers the logged names (for the zeros after the stop) and warns when every term
    /// stayed zero for a whole epoch: Σ|term| is kept on the device and read at its last batch.
    fn note_terms(&mut self, ctx: &HookInput<'_>, out: &HookLoss) {
        if self.logged.is_empty() {
            self.logged = out.terms.iter().map(|(n, _)| n.clone()).chain(out.logs.iter().map(|l| l.name.clone())).collect();
        }
        let Some(mass) = out.terms.iter().map(|(_, t)| t.clone().detach().abs().sum()).reduce(|a, b| a + b) else { return };
        let so_far = self.term_mass.take().filter(|_| ctx.pos.batch > 0);
        let mass = so_far.map_or(mass.clone(), |m| m + mass);
        if ctx.pos.batch + 1 < ctx.pos.batches {
            self.term_mass = Some(mass);
        } else if crate::device::read_back(mass)[0] == 0.0 {
            eprintln!("warning: every distillation term was zero for a whole epoch");
        }
    }
}

impl StepHook for Distiller {
    fn taps(&self) -> Vec<usize> {
        self.pairs.iter().map(|p| p.student_layer).collect()
    }

    fn extra_loss(&mut self, ctx: &HookInput<'_>) -> HookLoss {
        let mut out = HookLoss::default();
        if ctx.pos.epoch >= self.stop_epoch {
            // Distillation is over: its columns read 0 in the logs from here on.
            let device = ctx.images.device();
            for n in &self.logged {
                out.log(n.clone(), Tensor::zeros([1], &device));
            }
            return out;
        }
        let w = schedule_weight(self.args.distill_schedule, ctx.pos.epoch, ctx.pos.batch, ctx.pos.batches, self.stop_epoch);
        self.last_weight = w;
        let t_fwd = match self.pass.take() {
            Some(p) => p,
            None => self.teacher_forward(ctx.images),
        };
        if self.args.online && ctx.labeled > 0 {
            self.online_teacher_loss(ctx, &t_fwd, &mut out);
        }
        let online = self.args.online;
        let teacher_maps: Vec<Tensor<4>> = t_fwd.taps.iter().map(|t| constant(t, online)).collect();
        let t_head = t_fwd.head.as_ref().map(|h| HeadMaps { boxes: constant(&h.one2many.boxes, online), scores: constant(&h.one2many.scores, online) });
        self.feature_terms(ctx, &t_fwd, &teacher_maps, t_head.as_ref(), w, &mut out);
        self.response_term(ctx, &t_fwd, t_head.as_ref(), w, &mut out);
        self.mask_term(ctx, &t_fwd, w, &mut out);
        if let Some(m) = self.mean_teacher.as_mut() {
            m.log(ctx, &mut out);
        } else if let Some(c) = self.pseudo_counts.as_mut() {
            c.log(ctx, &mut out);
        }
        self.apply_calibration(&mut out);
        self.note_terms(ctx, &out);
        out
    }

    fn wants_unlabeled(&self, epoch: usize) -> bool {
        epoch < self.stop_epoch
    }

    /// The mean teacher's pseudo-labels when there is one, else the teacher's.
    fn pseudo_labels(&mut self, images: &Tensor<4>, labeled: usize, pos: StepPos, mean: Option<&DetectionModel>) -> Option<Targets> {
        if pos.epoch >= self.stop_epoch {
            return None;
        }
        if let Some(m) = self.mean_teacher.as_mut() {
            return m.labels(mean, images, labeled, pos.epoch);
        }
        let th = self.args.pseudo_thresholds()?;
        let pass = self.teacher_forward(images);
        let [b, _, h, w] = images.dims();
        let targets = detections_as_targets(self.teacher.head(), pass.head(), labeled, (h, w), th);
        self.pseudo_counts.get_or_insert_with(PseudoCounts::default).record(&targets, b - labeled);
        self.pass = Some(pass);
        Some(targets)
    }

    fn wants_gradient_norms(&self) -> bool {
        self.calibration_pending().is_some()
    }

    /// Calibration: the term weights are set from the norms, announced, and saved with the run.
    fn gradient_norms_measured(&mut self, det: f32, terms: &[(String, f32)]) -> Option<serde_json::Value> {
        let fraction = self.calibration_pending()?;
        let scales = self.calibrate(det, terms);
        let shown: Vec<String> =
            terms.iter().zip(&scales).map(|((n, g), (_, s))| format!("{n} ×{s:.4} (gradient {g:.3e})")).collect();
        // (no term: said once, when the options were checked)
        if !shown.is_empty() {
            eprintln!(
                "calibrated distillation weights to {fraction} of the detection gradient ({det:.3e}) on the first batch: {}",
                shown.join(", ")
            );
        }
        self.args.calibrated = scales;
        serde_json::to_value(&self.args).ok()
    }

    fn trainable(&mut self) -> Option<&mut dyn Trainable> {
        Some(self)
    }
}

impl Trainable for Distiller {
    fn walk_params(&mut self, f: &mut Visit<'_>) {
        for (i, a) in self.adapters.iter_mut().enumerate() {
            if let Some(a) = a {
                a.walk(&child("distill.adapter.", i), f);
            }
        }
        // the methods' own modules, in a fixed order (as they were made)
        let mut order: Vec<&mut Method> = self.methods.iter_mut().collect();
        order.sort_by_key(|m| m.feature);
        for m in order {
            m.imp.walk_params(f);
        }
        if let Some(c) = self.cross.as_mut() {
            c.walk_params(f);
        }
        // An online teacher trains with the student (same parameter-group rules by name).
        if self.args.online {
            self.teacher.walk("distill.teacher.", f);
        }
    }
}
