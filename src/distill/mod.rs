//! Knowledge distillation from a teacher detector into a student.

pub mod args;
pub mod crosskd;
pub mod distiller;
pub mod extension;
pub mod losses;
pub mod methods;
pub mod pseudo;
