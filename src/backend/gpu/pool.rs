//! Intermediate buffers, recycled: an operation's output comes from the pool and goes back to
//! it when the tensor is dropped, so after the first batch a forward pass allocates nothing.
//!
//! Recycling a buffer while commands that use it are still recorded but not submitted is safe:
//! the queue runs commands in order, so its next user sees it only after its last one. (Host
//! uploads never use pooled buffers: `queue.write_buffer` runs before the pending commands of
//! the same submission and could overwrite a buffer they still read.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::context::Context;
use crate::error::Result;

/// Bytes of the pool's buffers: in use now, at most at once, and the largest single buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in use now.
    pub in_use: u64,
    /// The most bytes in use at once.
    pub peak_in_use: u64,
    /// The largest single buffer.
    pub largest: u64,
}

pub struct Pool {
    ctx: Arc<Context>,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    stats: Mutex<PoolStats>,
}

/// A pooled buffer; returns to its pool when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pool: Arc<Pool>,
}

impl PooledBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_use -= self.class;
            let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
            free.entry(self.class).or_default().push(b);
        }
    }
}

/// Sizes are rounded up to one of eight steps per power of two (at most 12.5% slack), so
/// batches of slightly different token counts reuse each other's buffers.
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let step = (bytes.next_power_of_two() / 8).max(256);
    bytes.div_ceil(step) * step
}

impl Pool {
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        Arc::new(Pool {
            ctx,
            free: Mutex::default(),
            stats: Mutex::default(),
        })
    }

    /// A storage buffer of at least `bytes` bytes.
    pub fn take(self: &Arc<Self>, bytes: u64, what: &str) -> Result<PooledBuffer> {
        let class = size_class(bytes);
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&class)
            .and_then(Vec::pop);
        let buffer = match reused {
            Some(b) => b,
            None => {
                let usage = wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST;
                // Round to the class only while that still fits the binding limit.
                let size = if class <= self.ctx.limits.max_storage_buffer_binding_size {
                    class
                } else {
                    bytes.next_multiple_of(16)
                };
                self.ctx.buffer(size, usage, what)?
            }
        };
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.in_use += class;
        stats.peak_in_use = stats.peak_in_use.max(stats.in_use);
        stats.largest = stats.largest.max(buffer.size());
        Ok(PooledBuffer {
            buffer: Some(buffer),
            class,
            pool: self.clone(),
        })
    }

    pub fn stats(&self) -> PoolStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the peak and largest sizes (for measuring one phase of work).
    pub fn reset_peaks(&self) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.peak_in_use = s.in_use;
        s.largest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_with_little_slack() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(4097), 4096 + 1024);
        for bytes in [300u64, 5000, 123_457, 10_000_000] {
            let c = size_class(bytes);
            assert!(c >= bytes && c <= bytes + bytes / 8 + 256, "{bytes} -> {c}");
        }
    }
}
