//! CrossKD's cross head: per level, the student's head features (the first stage of each of
//! its Detect branches, on its Detect inputs) through 1×1 adapters where widths differ, then
//! through the frozen teacher's later head layers. The teacher's layers are copied as constants
//! of the autodiff device, so the gradient passes through them to the student and never
//! changes them.

use anyhow::{bail, Result};
use burn::module::Param;
use burn::tensor::{Device, Tensor};

use super::losses::Adapter;
use crate::model::layers::head::{BoxBranch, ClsBranch, Detect, HeadMaps};
use crate::model::walk::{child, drawn_to, Slot, Visit, Walk};
use crate::model::DetectionModel;

/// One level of the cross head.
pub struct CrossLevel {
    box_adapter: Option<Adapter>,
    cls_adapter: Option<Adapter>,
    teacher_box: BoxBranch,
    teacher_cls: ClsBranch,
}

pub struct CrossHead {
    levels: Vec<CrossLevel>,
}

/// A copy of a teacher branch whose tensors are constants of the autodiff device.
fn constant_copy<T: Walk + Clone>(branch: &T) -> T {
    let mut copy = branch.clone();
    copy.walk("", &mut |_, slot| match slot {
        Slot::P4(p) => *p = Param::initialized(p.id, p.val().inner().autodiff()),
        Slot::P1(p) => *p = Param::initialized(p.id, p.val().inner().autodiff()),
        _ => {}
    });
    copy
}

impl CrossHead {
    /// The cross head of `student` and a frozen (fused) `teacher` whose Detect levels have the
    /// same strides; adapters map the student's stage widths to the teacher's.
    pub fn new(student: &DetectionModel, teacher: &DetectionModel, device: &Device) -> Result<Self> {
        let (s, t) = (student.head(), teacher.head());
        if s.strides != t.strides {
            bail!("--logit crosskd needs Detect levels of the same strides (student {:?}, teacher {:?})", s.strides, t.strides);
        }
        let host = crate::device::init_device(device);
        let adapter = |from: usize, to: usize| (from != to).then(|| drawn_to(Adapter::new(from, to, &host), device));
        let levels = (0..s.cv2.len())
            .map(|l| CrossLevel {
                box_adapter: adapter(s.cv2[l].stage_width(), t.cv2[l].stage_width()),
                cls_adapter: adapter(s.cv3[l].stage_width(), t.cv3[l].stage_width()),
                teacher_box: constant_copy(&t.cv2[l]),
                teacher_cls: constant_copy(&t.cv3[l]),
            })
            .collect();
        Ok(Self { levels })
    }

    /// The cross-head predictions from the student's head `student` and its Detect inputs
    /// `inputs`, flattened over the levels as the head's own maps.
    pub fn predictions(&self, student: &Detect, inputs: &[Tensor<4>]) -> HeadMaps {
        let (mut boxes, mut scores) = (Vec::new(), Vec::new());
        for (l, (level, x)) in self.levels.iter().zip(inputs).enumerate() {
            let through = |a: &Option<Adapter>, y: Tensor<4>| a.as_ref().map_or(y.clone(), |a| a.forward(y));
            let b = through(&level.box_adapter, student.cv2[l].first_stage(x.clone()));
            let c = through(&level.cls_adapter, student.cv3[l].first_stage(x.clone()));
            boxes.push(level.teacher_box.later_stages(b).flatten::<3>(2, 3));
            scores.push(level.teacher_cls.later_stages(c).flatten::<3>(2, 3));
        }
        HeadMaps { boxes: Tensor::cat(boxes, 2), scores: Tensor::cat(scores, 2) }
    }

    /// The adapters' widths per level, for the pairing report: `box a→b, cls c→d`.
    pub fn describe(&self) -> String {
        let shown = |a: &Option<Adapter>| match a {
            Some(a) => {
                let d = a.conv.weight.val().dims();
                format!("{}→{}", d[1], d[0])
            }
            None => "no adapter".into(),
        };
        let levels: Vec<String> = self.levels.iter().map(|l| format!("box {}, cls {}", shown(&l.box_adapter), shown(&l.cls_adapter))).collect();
        levels.join("; ")
    }

    /// The adapters: the cross head's only trainable tensors.
    pub fn walk_params(&mut self, f: &mut Visit<'_>) {
        for (l, level) in self.levels.iter_mut().enumerate() {
            for (what, a) in [("box", &mut level.box_adapter), ("cls", &mut level.cls_adapter)] {
                if let Some(a) = a {
                    a.walk(&child(&format!("distill.cross.{what}."), l), f);
                }
            }
        }
    }
}
