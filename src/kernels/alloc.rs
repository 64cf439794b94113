//! glibc's malloc returns every freed block above its mmap threshold (at most 32 MiB) to the
//! kernel, and the next allocation of the same size faults its pages in again, zero-filled by the
//! kernel. A training step allocates and frees the same activation sizes every iteration, so it
//! paid those page faults on every step. Raising the thresholds keeps the blocks for reuse.

/// Keeps freed blocks up to 1 GiB in the heap and trims it only above 1 GiB of free space.
/// Call once at start-up, before the threads that allocate tensors exist.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
