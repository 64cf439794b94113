//! Knowledge distillation from a teacher detector into a student.
//!
//! [`losses`] holds every distillation loss of the reference design
//! (`../shared/reference/distillation.md`) as pure tensor functions: feature
//! losses (mimic, CWD, MGD, attention, Gram, batch relation), response losses
//! (logit MSE, KL with temperature, mixed soft/hard targets, localisation
//! distillation on DFL distributions), Ultralytics' score-weighted L2, the
//! seed's adapter + normalisation pipeline and the loss-weight schedules.
//! All are computed in f32; teacher inputs are treated as constants.

pub mod args;
pub mod distiller;
pub mod extension;
pub mod losses;
pub mod methods;
