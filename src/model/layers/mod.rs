//! Network building blocks, one file per family of modules.

pub mod attention;
pub mod blocks;
pub mod conv;
pub mod head;
pub mod mask;
pub mod v10;
