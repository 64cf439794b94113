//! The feature methods, one type each behind [`FeatureMethod`]: its own trainable modules, its
//! loss at one paired level and how its levels combine. The distiller weights, schedules,
//! calibrates and logs every method alike; adding one touches this file and [`Feature`].

use anyhow::{bail, Context, Result};
use burn::tensor::Tensor;

use super::losses::{
    attention_transfer, batch_relation, cwd, gram, mgd, mimic, pkd_level, random_keep_mask, score_weighted_l2, seed_pipeline, Adapter,
    MgdGenerator, Projector,
};
use crate::model::walk::{child, Visit, Walk};

/// The maps of every paired level that the feature methods compare.
pub struct LevelMaps<'a> {
    /// The student's maps, resized to the teacher's.
    pub student: &'a [Tensor<4>],
    /// The same through the adapters (to the teacher's channels).
    pub adapted: &'a [Tensor<4>],
    pub adapters: &'a [Option<Adapter>],
    pub teacher: &'a [Tensor<4>],
    /// The teacher's class logits per level (only for methods that ask for them).
    pub teacher_scores: &'a [Tensor<4>],
}

/// Which step a loss is computed for (random masks are a function of it, so resume is exact).
#[derive(Debug, Clone, Copy)]
pub struct StepKey {
    pub seed: u64,
    pub epoch: usize,
    pub batch: usize,
}

/// A method's behaviour; its name is its [`Feature`]'s.
pub trait FeatureMethod {
    /// Whether its levels are averaged (at, gram, relation) rather than summed, as the spec says.
    fn averaged(&self) -> bool {
        false
    }
    /// Whether it reads the teacher's class logits per level.
    fn needs_teacher_scores(&self) -> bool {
        false
    }
    /// Its loss at paired level `l`.
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, step: StepKey) -> Tensor<1>;
    /// Its own trainable modules, named under `distill.`.
    fn walk_params(&mut self, _f: &mut Visit<'_>) {}
}

/// A method as written in `--distill` (the parsed name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Mimic,
    Cwd,
    Mgd,
    At,
    Gram,
    Relation,
    Sl2,
    Pkd,
}

const NAMES: [(&str, Feature); 8] = [
    ("mimic", Feature::Mimic),
    ("cwd", Feature::Cwd),
    ("mgd", Feature::Mgd),
    ("at", Feature::At),
    ("gram", Feature::Gram),
    ("relation", Feature::Relation),
    ("sl2", Feature::Sl2),
    ("pkd", Feature::Pkd),
];

impl Feature {
    fn parse(s: &str) -> Result<Self> {
        match NAMES.iter().find(|(n, _)| *n == s) {
            Some((_, f)) => Ok(*f),
            None => bail!("unknown distillation method '{s}' (mimic, cwd, mgd, at, gram, relation, sl2, pkd, none)"),
        }
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).expect("every method has a name")
    }

    /// Methods comparing maps channel by channel need the student adapted to the teacher's channels.
    pub fn needs_adapter(self) -> bool {
        matches!(self, Self::Mimic | Self::Cwd | Self::Mgd | Self::Gram | Self::Pkd)
    }

    /// The method with its modules: MGD takes `generators`, sl2 takes `projectors` (made by the
    /// distiller in a fixed order, so that a seed gives the same initial weights).
    pub fn build(self, generators: &mut Option<Vec<MgdGenerator>>, projectors: &mut Option<Vec<Projector>>, cwd_tau: f32, mgd_alpha: f32, mgd_lambda: f32) -> Box<dyn FeatureMethod> {
        match self {
            Self::Mimic => Box::new(Mimic),
            Self::Cwd => Box::new(Cwd { tau: cwd_tau }),
            Self::Mgd => Box::new(Mgd { generators: generators.take().unwrap_or_default(), alpha: mgd_alpha, lambda: mgd_lambda }),
            Self::At => Box::new(At),
            Self::Gram => Box::new(Gram),
            Self::Relation => Box::new(Relation),
            Self::Sl2 => Box::new(Sl2 { projectors: projectors.take().unwrap_or_default() }),
            Self::Pkd => Box::new(Pkd),
        }
    }
}

/// Parses `cwd:1.0,at:0.5` into methods with weights (finite, 0 or more); `none` stands alone.
pub fn parse_methods(spec: &str, default_weight: f32) -> Result<Vec<(Feature, f32)>> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "none" {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|part| {
            let mut it = part.trim().splitn(2, ':');
            let name = it.next().unwrap_or("").trim();
            if name == "none" {
                bail!("'none' means no feature method and stands alone; it cannot be listed with others ('{spec}')");
            }
            let m = Feature::parse(name)?;
            let w = match it.next() {
                Some(w) => w.trim().parse::<f32>().with_context(|| format!("bad weight in '{part}': not a number"))?,
                None => default_weight,
            };
            if !(w.is_finite() && w >= 0.0) {
                bail!("bad weight in '{}': must be a finite number of 0 or more, got {w}", part.trim());
            }
            Ok((m, w))
        })
        .collect()
}

/// Normalised student (through the adapter) and teacher maps of level `l`, the seed's pipeline.
fn normalised(l: usize, maps: &LevelMaps<'_>) -> ([Tensor<4>; 1], [Tensor<4>; 1]) {
    let (s, t) = seed_pipeline(maps.student[l].clone(), maps.teacher[l].clone(), maps.adapters[l].as_ref());
    ([s], [t])
}

/// PKD: the adapted student and the teacher standardised per channel (their own statistics,
/// not the seed's BatchNorm).
struct Pkd;

impl FeatureMethod for Pkd {
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        pkd_level(maps.adapted[l].clone(), maps.teacher[l].clone())
    }
}

struct Mimic;

impl FeatureMethod for Mimic {
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        let (s, t) = normalised(l, maps);
        mimic(&s, &t)
    }
}

struct Cwd {
    tau: f32,
}

impl FeatureMethod for Cwd {
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        let (s, t) = normalised(l, maps);
        cwd(&s, &t, self.tau)
    }
}

struct Mgd {
    generators: Vec<MgdGenerator>,
    alpha: f32,
    lambda: f32,
}

impl FeatureMethod for Mgd {
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, step: StepKey) -> Tensor<1> {
        let a = &maps.adapted[l..=l];
        let d = a[0].dims();
        let key = [step.seed, step.epoch as u64, step.batch as u64, l as u64];
        let mask = [random_keep_mask(d[0], d[2], d[3], self.lambda, key, &a[0].device())];
        mgd(a, &maps.teacher[l..=l], &mask, &self.generators[l..=l], self.alpha)
    }
    fn walk_params(&mut self, f: &mut Visit<'_>) {
        for (i, g) in self.generators.iter_mut().enumerate() {
            g.walk(&child("distill.mgd.", i), f);
        }
    }
}

struct At;

impl FeatureMethod for At {
    fn averaged(&self) -> bool {
        true
    }
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        attention_transfer(&maps.student[l..=l], &maps.teacher[l..=l])
    }
}

struct Gram;

impl FeatureMethod for Gram {
    fn averaged(&self) -> bool {
        true
    }
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        gram(&maps.adapted[l..=l], &maps.teacher[l..=l])
    }
}

struct Relation;

impl FeatureMethod for Relation {
    fn averaged(&self) -> bool {
        true
    }
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        batch_relation(&maps.student[l..=l], &maps.teacher[l..=l])
    }
}

struct Sl2 {
    projectors: Vec<Projector>,
}

impl FeatureMethod for Sl2 {
    fn needs_teacher_scores(&self) -> bool {
        true
    }
    fn level_loss(&self, l: usize, maps: &LevelMaps<'_>, _: StepKey) -> Tensor<1> {
        let scores = &maps.teacher_scores[l];
        let [n, c, h, w] = scores.dims();
        let t = &maps.teacher[l];
        let td = t.dims();
        let logits: Tensor<3> = if h * w == td[2] * td[3] {
            scores.clone().reshape([n, c, h * w])
        } else {
            super::distiller::resize_to(scores.clone(), td[2], td[3]).reshape([n, c, td[2] * td[3]])
        };
        score_weighted_l2(self.projectors[l].forward(maps.student[l].clone()), t.clone(), logits)
    }
    fn walk_params(&mut self, f: &mut Visit<'_>) {
        for (i, g) in self.projectors.iter_mut().enumerate() {
            g.walk(&child("distill.projector.", i), f);
        }
    }
}
