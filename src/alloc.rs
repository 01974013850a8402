//! The allocator setting that keeps freed activations for the next pass.

/// Lets glibc keep the memory of freed activations for the next ones. A process-wide
/// allocator setting (glibc on Linux; elsewhere it does nothing) that the `bge` binary makes
/// first thing in `main` and the Python package at import; a library user may make it too.
///
/// By default glibc serves each buffer over 128 KiB (later: over the largest freed so far, up
/// to 32 MiB) with a fresh `mmap`, whose pages the kernel faults in and zeroes on first touch,
/// and returns the heap top to the system once 128 KiB of it are free. With this, buffers up
/// to 1 GiB come from the heap, which keeps up to 1 GiB of free memory, and all threads share
/// one arena: the forward pass allocates on rayon's workers, and a worker's own arena (64 MiB
/// heaps) would still map every buffer larger than that afresh. Measured on the CPU backend:
/// bge-base at 32 x 128, 3-4% of a forward pass (50k page faults per pass); all-MiniLM-L6-v2
/// on 2,000 long texts from Python, a third of the time (68 texts/s with 7.1 million minor
/// faults, 104 texts/s with 0.36 million).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_ARENA_MAX: std::ffi::c_int = -8;
        // SAFETY: mallopt only changes allocator tunables, under glibc's own arena lock; the
        // binary calls it before any thread starts, Python at import.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
