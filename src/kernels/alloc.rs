//! glibc's malloc serves blocks above its mmap threshold (32 MiB at most) with fresh mappings and
//! returns them to the kernel when freed, and trims the heap top once 128 KiB are free; the next
//! allocation of the same size then faults its pages in again, zero-filled by the kernel. A
//! training step allocates and frees the same activation sizes every iteration, so it paid those
//! page faults on every step. Here every block comes from the heap and the heap is not trimmed,
//! so freed blocks are reused.

/// Serves every allocation from the heap and never trims it. Call once at start-up, before the
/// threads that allocate tensors exist. Returns whether glibc took both settings.
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_both_settings() {
        assert!(super::keep_freed_buffers());
    }
}
