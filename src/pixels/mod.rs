//! Images as files and pixels: reading and listing image files, letterbox and resizing,
//! drawing. A leaf: nothing else of the crate is used here, so data, inference and reports
//! share it without depending on each other.

pub mod contour;
pub mod draw;
pub mod letterbox;
pub mod load;
